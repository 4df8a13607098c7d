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

#if defined(SK_WITH_CONV) || defined(SK_WITH_DEPTHWISE_IN_PLACE)
/* One output channel of a (grouped) convolution: out plane of ho x wo, int8 or int32 (out_i32).
 * Taps outside the input are the zero point (real 0) and add nothing, so they are skipped. */
static void sk_conv_plane(const int8_t *in, int cin_g, int h, int w, int32_t in_zp,
                          const int8_t *wk, int32_t bias, int32_t m0, int32_t shift,
                          void *out, int out_i32, int ho, int wo,
                          int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                          int32_t out_zp, int32_t act_min, int32_t act_max)
{
    for (int oy = 0; oy < ho; ++oy) {
        for (int ox = 0; ox < wo; ++ox) {
            int32_t acc = bias;
            for (int ic = 0; ic < cin_g; ++ic) {
                const int8_t *plane = in + (size_t)ic * h * w;
                const int8_t *wc = wk + (size_t)ic * kh * kw;
                for (int ky = 0; ky < kh; ++ky) {
                    const int iy = oy * sh - ph + ky * dh;
                    if (iy < 0 || iy >= h) {
                        continue;
                    }
                    for (int kx = 0; kx < kw; ++kx) {
                        const int ix = ox * sw - pw + kx * dw;
                        if (ix < 0 || ix >= w) {
                            continue;
                        }
                        acc += ((int32_t)plane[iy * w + ix] - in_zp) * (int32_t)wc[ky * kw + kx];
                    }
                }
            }
            const int32_t v = sk_clamp(sk_requantize(acc, m0, shift) + out_zp, act_min, act_max);
            if (out_i32) {
                ((int32_t *)out)[oy * wo + ox] = v;
            } else {
                ((int8_t *)out)[oy * wo + ox] = (int8_t)v;
            }
        }
    }
}

#endif

#ifdef SK_WITH_CONV
/* Convolution (and Linear: a 1x1 convolution of a cin x 1 x 1 input) with per-channel requantization. */
static void sk_conv2d(const int8_t *in, int cin, int h, int w, int32_t in_zp,
                      const int8_t *wt, const int32_t *bias, const int32_t *m0, const int32_t *shift,
                      void *out, int out_i32, int cout, int ho, int wo,
                      int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                      int32_t out_zp, int32_t act_min, int32_t act_max)
{
    const int cin_g = cin / groups;
    const int cout_g = cout / groups;
    const size_t plane_out = (size_t)ho * wo;
    for (int oc = 0; oc < cout; ++oc) {
        const int g = oc / cout_g;
        void *dst = out_i32 ? (void *)((int32_t *)out + oc * plane_out) : (void *)((int8_t *)out + oc * plane_out);
        sk_conv_plane(in + (size_t)g * cin_g * h * w, cin_g, h, w, in_zp, wt + (size_t)oc * cin_g * kh * kw,
                      bias[oc], m0[oc], shift[oc], dst, out_i32, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw,
                      out_zp, act_min, act_max);
    }
}
#endif

#ifdef SK_WITH_DEPTHWISE_IN_PLACE
/* Depthwise convolution over its own input: channel c is computed into tmp (ho x wo bytes) and
 * copied to where output channel c belongs; with ho*wo <= h*w that only overwrites input
 * channels <= c, which no later channel reads (TinyEngine's in-place depthwise). */
static void sk_depthwise_in_place(int8_t *buf, int c, int h, int w, int32_t in_zp,
                                  const int8_t *wt, const int32_t *bias, const int32_t *m0, const int32_t *shift,
                                  int8_t *tmp, int ho, int wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                  int dh, int dw, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    const size_t plane_out = (size_t)ho * wo;
    for (int ch = 0; ch < c; ++ch) {
        sk_conv_plane(buf + (size_t)ch * h * w, 1, h, w, in_zp, wt + (size_t)ch * kh * kw, bias[ch], m0[ch],
                      shift[ch], tmp, 0, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, out_zp, act_min, act_max);
        memmove(buf + ch * plane_out, tmp, plane_out);
    }
}
#endif

#ifdef SK_WITH_MAXPOOL
static void sk_maxpool2d(const int8_t *in, int c, int h, int w, int8_t *out, int ho, int wo,
                         int kh, int kw, int sh, int sw, int ph, int pw)
{
    for (int ch = 0; ch < c; ++ch) {
        const int8_t *plane = in + (size_t)ch * h * w;
        for (int oy = 0; oy < ho; ++oy) {
            for (int ox = 0; ox < wo; ++ox) {
                int32_t best = -128;
                int any = 0;
                for (int ky = 0; ky < kh; ++ky) {
                    const int iy = oy * sh - ph + ky;
                    for (int kx = 0; kx < kw; ++kx) {
                        const int ix = ox * sw - pw + kx;
                        if (iy < 0 || iy >= h || ix < 0 || ix >= w) {
                            continue;
                        }
                        if (!any || plane[iy * w + ix] > best) {
                            best = plane[iy * w + ix];
                            any = 1;
                        }
                    }
                }
                out[((size_t)ch * ho + oy) * wo + ox] = (int8_t)best;
            }
        }
    }
}
#endif

#ifdef SK_WITH_AVGPOOL
/* Average pooling without padding: the window's sum of (x - zp) scaled by s_in / (s_out * count). */
static void sk_avgpool2d(const int8_t *in, int c, int h, int w, int32_t in_zp, int8_t *out, int ho, int wo,
                         int kh, int kw, int sh, int sw, int32_t m0, int32_t shift, int32_t out_zp)
{
    for (int ch = 0; ch < c; ++ch) {
        const int8_t *plane = in + (size_t)ch * h * w;
        for (int oy = 0; oy < ho; ++oy) {
            for (int ox = 0; ox < wo; ++ox) {
                int32_t sum = 0;
                for (int ky = 0; ky < kh; ++ky) {
                    for (int kx = 0; kx < kw; ++kx) {
                        sum += (int32_t)plane[(oy * sh + ky) * w + ox * sw + kx] - in_zp;
                    }
                }
                out[((size_t)ch * ho + oy) * wo + ox] =
                    (int8_t)sk_clamp(sk_requantize(sum, m0, shift) + out_zp, -128, 127);
            }
        }
    }
}
#endif

#ifdef SK_WITH_ADD
/* a + b with their own scales (TFLite's scheme: both inputs shifted left 20 bits, scaled to
 * twice the larger input scale, summed, then scaled to the output). Element by element, so
 * out may be a or b. */
static void sk_add(const int8_t *a, int32_t a_zp, int32_t a_m0, int32_t a_shift,
                   const int8_t *b, int32_t b_zp, int32_t b_m0, int32_t b_shift,
                   int8_t *out, size_t n, int32_t m0, int32_t shift, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    for (size_t i = 0; i < n; ++i) {
        const int32_t sa = sk_requantize(((int32_t)a[i] - a_zp) * (1 << 20), a_m0, a_shift);
        const int32_t sb = sk_requantize(((int32_t)b[i] - b_zp) * (1 << 20), b_m0, b_shift);
        out[i] = (int8_t)sk_clamp(sk_requantize(sa + sb, m0, shift) + out_zp, act_min, act_max);
    }
}
#endif

#ifdef SK_WITH_REQUANTIZE
/* A new scale and zero point for the same real values (element by element; out may be in). */
static void sk_requantize_tensor(const int8_t *in, int32_t in_zp, int8_t *out, size_t n,
                                 int32_t m0, int32_t shift, int32_t out_zp, int32_t act_min, int32_t act_max)
{
    for (size_t i = 0; i < n; ++i) {
        out[i] = (int8_t)sk_clamp(sk_requantize((int32_t)in[i] - in_zp, m0, shift) + out_zp, act_min, act_max);
    }
}
#endif

#ifdef SK_WITH_CLAMP
/* ReLU / ReLU6 as a clamp of the codes (out may be in). */
static void sk_clamp_tensor(const int8_t *in, int8_t *out, size_t n, int32_t lo, int32_t hi)
{
    for (size_t i = 0; i < n; ++i) {
        out[i] = (int8_t)sk_clamp(in[i], lo, hi);
    }
}
#endif

#endif /* SLIMKIT_KERNELS_H */
