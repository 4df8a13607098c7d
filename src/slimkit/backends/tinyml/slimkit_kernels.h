/* slimkit TinyML kernels: int8 inference in C99, no heap, no floating point.
 *
 * Tensors are batch 1 in CHW order (PyTorch's layout). Activations are int8 with a per-tensor
 * zero point; weights int8 per output channel (symmetric); biases and accumulators int32.
 * Requantization is TensorFlow Lite's / CMSIS-NN's fixed point: an int32 multiplier M0 in
 * [2^30, 2^31) and a shift, gemmlowp's roundings (slimkit's fixedpoint.py is the same
 * arithmetic in Python, and the generated model is tested bit for bit against it).
 * Right shifts of negative values are arithmetic, as on every compiler for ARM and x86.
 * The generated model defines SK_WITH_<KERNEL> for the kernels it calls before including this.
 */
#ifndef SLIMKIT_KERNELS_H
#define SLIMKIT_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline int32_t sk_rounding_doubling_high_mul(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    const int64_t ab = (int64_t)a * (int64_t)b;
    const int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

static inline int32_t sk_rounding_divide_by_pot(int32_t x, int exponent)
{
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* x * M0 * 2^(shift - 31), rounded; a left shift beyond int32 saturates */
static inline int32_t sk_requantize(int32_t x, int32_t m0, int32_t shift)
{
    const int left = shift > 0 ? (int)shift : 0;
    const int right = shift > 0 ? 0 : (int)-shift;
    int64_t shifted = (int64_t)x * ((int64_t)1 << left);
    if (shifted > INT32_MAX) {
        shifted = INT32_MAX;
    } else if (shifted < INT32_MIN) {
        shifted = INT32_MIN;
    }
    return sk_rounding_divide_by_pot(sk_rounding_doubling_high_mul((int32_t)shifted, m0), right);
}

static inline int32_t sk_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* A window of a feature map: rows y0 .. y0+h-1 and columns x0 .. x0+w-1 (a whole map: 0, 0, H, W).
 * A buffer holding a window stores each channel's h x w values contiguously (CHW). Patch-based
 * execution runs the first layers window by window; every other op runs on whole maps. */
typedef struct {
    int16_t y0, x0, h, w;
} sk_window;

static inline size_t sk_at(sk_window buf, int c, int y, int x)
{
    return ((size_t)c * buf.h + (size_t)(y - buf.y0)) * buf.w + (size_t)(x - buf.x0);
}

typedef struct {
    int16_t cin, cout, groups, kh, kw, sh, sw, ph, pw, dh, dw;
    int16_t in_h, in_w, out_h, out_w; /* the whole maps: taps outside the input are padding */
    int32_t in_zp, out_zp, act_min, act_max;
    const int8_t *weight;
    const int32_t *bias, *m0, *shift;
} sk_conv_params;

#if defined(SK_WITH_CONV) || defined(SK_WITH_DEPTHWISE_IN_PLACE)
/* Output channel oc over the window ow of a (grouped) convolution, int8 or int32 (out_i32); in
 * points at the channel group's first channel in a buffer holding window iw, out at channel oc's
 * plane in a buffer holding window ob. Taps outside the input map are the zero point (real 0) and
 * add nothing, so they are skipped. */
static void sk_conv_plane(const sk_conv_params *p, int oc, const int8_t *in, sk_window iw, int cin_g,
                          void *out, int out_i32, sk_window ob, sk_window ow)
{
    const int8_t *wk = p->weight + (size_t)oc * cin_g * p->kh * p->kw;
    for (int oy = ow.y0; oy < ow.y0 + ow.h; ++oy) {
        for (int ox = ow.x0; ox < ow.x0 + ow.w; ++ox) {
            int32_t acc = p->bias[oc];
            for (int ic = 0; ic < cin_g; ++ic) {
                const int8_t *wc = wk + (size_t)ic * p->kh * p->kw;
                for (int ky = 0; ky < p->kh; ++ky) {
                    const int iy = oy * p->sh - p->ph + ky * p->dh;
                    if (iy < 0 || iy >= p->in_h) {
                        continue;
                    }
                    for (int kx = 0; kx < p->kw; ++kx) {
                        const int ix = ox * p->sw - p->pw + kx * p->dw;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        acc += ((int32_t)in[sk_at(iw, ic, iy, ix)] - p->in_zp) * (int32_t)wc[ky * p->kw + kx];
                    }
                }
            }
            const int32_t v = sk_clamp(sk_requantize(acc, p->m0[oc], p->shift[oc]) + p->out_zp, p->act_min, p->act_max);
            if (out_i32) {
                ((int32_t *)out)[sk_at(ob, 0, oy, ox)] = v;
            } else {
                ((int8_t *)out)[sk_at(ob, 0, oy, ox)] = (int8_t)v;
            }
        }
    }
}
#endif

#ifdef SK_WITH_CONV
/* Convolution (and Linear: a 1x1 convolution of a cin x 1 x 1 map) over the output window ow,
 * with per-channel requantization; in holds window iw of the input, out window ob of the output. */
static void sk_conv2d(const sk_conv_params *p, const int8_t *in, sk_window iw, void *out, int out_i32,
                      sk_window ob, sk_window ow)
{
    const int cin_g = p->cin / p->groups;
    const int cout_g = p->cout / p->groups;
    const size_t in_plane = (size_t)iw.h * iw.w;
    const size_t out_plane = (size_t)ob.h * ob.w;
    for (int oc = 0; oc < p->cout; ++oc) {
        const int g = oc / cout_g;
        void *dst = out_i32 ? (void *)((int32_t *)out + oc * out_plane) : (void *)((int8_t *)out + oc * out_plane);
        sk_conv_plane(p, oc, in + (size_t)g * cin_g * in_plane, iw, cin_g, dst, out_i32, ob, ow);
    }
}
#endif

#ifdef SK_WITH_DEPTHWISE_IN_PLACE
/* Depthwise convolution of whole maps over its own input: channel c is computed into tmp (one
 * output plane) and copied to where output channel c belongs; with an output plane no larger than
 * an input plane that only overwrites input channels <= c, which no later channel reads
 * (TinyEngine's in-place depthwise). */
static void sk_depthwise_in_place(const sk_conv_params *p, int8_t *buf, int8_t *tmp)
{
    const sk_window iw = {0, 0, p->in_h, p->in_w};
    const sk_window ow = {0, 0, p->out_h, p->out_w};
    const size_t in_plane = (size_t)p->in_h * p->in_w;
    const size_t out_plane = (size_t)p->out_h * p->out_w;
    for (int ch = 0; ch < p->cout; ++ch) {
        sk_conv_plane(p, ch, buf + ch * in_plane, iw, 1, tmp, 0, ow, ow);
        memmove(buf + ch * out_plane, tmp, out_plane);
    }
}
#endif

typedef struct {
    int16_t c, kh, kw, sh, sw, ph, pw, in_h, in_w;
    int32_t in_zp, m0, shift, out_zp; /* average pooling: the window sum's scale to the output */
} sk_pool_params;

#ifdef SK_WITH_MAXPOOL
static void sk_maxpool2d(const sk_pool_params *p, const int8_t *in, sk_window iw, int8_t *out, sk_window ob,
                         sk_window ow)
{
    for (int ch = 0; ch < p->c; ++ch) {
        for (int oy = ow.y0; oy < ow.y0 + ow.h; ++oy) {
            for (int ox = ow.x0; ox < ow.x0 + ow.w; ++ox) {
                int32_t best = -128;
                int any = 0;
                for (int ky = 0; ky < p->kh; ++ky) {
                    const int iy = oy * p->sh - p->ph + ky;
                    for (int kx = 0; kx < p->kw; ++kx) {
                        const int ix = ox * p->sw - p->pw + kx;
                        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        const int8_t v = in[sk_at(iw, ch, iy, ix)];
                        if (!any || v > best) {
                            best = v;
                            any = 1;
                        }
                    }
                }
                out[sk_at(ob, ch, oy, ox)] = (int8_t)best;
            }
        }
    }
}
#endif

#ifdef SK_WITH_AVGPOOL
/* Average pooling without padding: the window's sum of (x - zp) scaled by s_in / (s_out * count). */
static void sk_avgpool2d(const sk_pool_params *p, const int8_t *in, sk_window iw, int8_t *out, sk_window ob,
                         sk_window ow)
{
    for (int ch = 0; ch < p->c; ++ch) {
        for (int oy = ow.y0; oy < ow.y0 + ow.h; ++oy) {
            for (int ox = ow.x0; ox < ow.x0 + ow.w; ++ox) {
                int32_t sum = 0;
                for (int ky = 0; ky < p->kh; ++ky) {
                    for (int kx = 0; kx < p->kw; ++kx) {
                        sum += (int32_t)in[sk_at(iw, ch, oy * p->sh + ky, ox * p->sw + kx)] - p->in_zp;
                    }
                }
                out[sk_at(ob, ch, oy, ox)] = (int8_t)sk_clamp(sk_requantize(sum, p->m0, p->shift) + p->out_zp, -128, 127);
            }
        }
    }
}
#endif

typedef struct {
    int32_t a_zp, a_m0, a_shift, b_zp, b_m0, b_shift, m0, shift, out_zp, act_min, act_max;
} sk_add_params;

/* a + b with their own scales (TFLite's scheme: both inputs shifted left 20 bits, scaled to twice
 * the larger input scale, summed, then scaled to the output) */
static inline int8_t sk_add_one(const sk_add_params *p, int8_t a, int8_t b)
{
    const int32_t sa = sk_requantize(((int32_t)a - p->a_zp) * (1 << 20), p->a_m0, p->a_shift);
    const int32_t sb = sk_requantize(((int32_t)b - p->b_zp) * (1 << 20), p->b_m0, p->b_shift);
    return (int8_t)sk_clamp(sk_requantize(sa + sb, p->m0, p->shift) + p->out_zp, p->act_min, p->act_max);
}

typedef struct {
    int32_t in_zp, m0, shift, out_zp, act_min, act_max; /* a clamp alone (ReLU): m0 = 0 */
} sk_map_params;

/* A new scale and zero point for the same real values, then the clamp; or the clamp alone. */
static inline int8_t sk_map_one(const sk_map_params *p, int8_t x)
{
    const int32_t v = p->m0 ? sk_requantize((int32_t)x - p->in_zp, p->m0, p->shift) + p->out_zp : x;
    return (int8_t)sk_clamp(v, p->act_min, p->act_max);
}

#ifdef SK_WITH_ADD
/* Whole maps, element by element: out may be a or b. */
static void sk_add(const sk_add_params *p, const int8_t *a, const int8_t *b, int8_t *out, size_t n)
{
    for (size_t i = 0; i < n; ++i) {
        out[i] = sk_add_one(p, a[i], b[i]);
    }
}
#endif

#ifdef SK_WITH_ADD_WINDOW
/* Over window ow of c channels, each buffer indexed by its own window. */
static void sk_add_window(const sk_add_params *p, int c, const int8_t *a, sk_window aw, const int8_t *b,
                          sk_window bw, int8_t *out, sk_window ob, sk_window ow)
{
    for (int ch = 0; ch < c; ++ch) {
        for (int y = ow.y0; y < ow.y0 + ow.h; ++y) {
            for (int x = ow.x0; x < ow.x0 + ow.w; ++x) {
                out[sk_at(ob, ch, y, x)] = sk_add_one(p, a[sk_at(aw, ch, y, x)], b[sk_at(bw, ch, y, x)]);
            }
        }
    }
}
#endif

#ifdef SK_WITH_MAP
/* Whole maps, element by element: out may be in. */
static void sk_map(const sk_map_params *p, const int8_t *in, int8_t *out, size_t n)
{
    for (size_t i = 0; i < n; ++i) {
        out[i] = sk_map_one(p, in[i]);
    }
}
#endif

#ifdef SK_WITH_MAP_WINDOW
static void sk_map_window(const sk_map_params *p, int c, const int8_t *in, sk_window iw, int8_t *out, sk_window ob,
                          sk_window ow)
{
    for (int ch = 0; ch < c; ++ch) {
        for (int y = ow.y0; y < ow.y0 + ow.h; ++y) {
            for (int x = ow.x0; x < ow.x0 + ow.w; ++x) {
                out[sk_at(ob, ch, y, x)] = sk_map_one(p, in[sk_at(iw, ch, y, x)]);
            }
        }
    }
}
#endif

#endif /* SLIMKIT_KERNELS_H */
