"""Weight sharing: 1-D k-means against scikit-learn, packed codes, shared layers whose codebook
gradients are the summed weight gradients, and the ``cluster`` step (bytes, accuracy, pruned
zeros kept, reload, ONNX Runtime)."""

import math

import pytest
import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.recipes.runner import run_recipe
from slimkit.techniques.sharing.codebook import SharedConv2d, SharedLinear, code_bits
from slimkit.techniques.sharing.kmeans import initial_centroids, kmeans_1d

MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}


def test_kmeans_1d_matches_scikit_learn_from_the_same_initial_centroids():
    from sklearn.cluster import KMeans

    torch.manual_seed(0)
    values = torch.cat([torch.randn(3000) * 0.05, torch.randn(200) * 0.3 + 0.5])
    for init in ("linear", "density", "random"):
        start = initial_centroids(values, 8, init, seed=1)
        ours, codes = kmeans_1d(values, 8, init, iters=300, seed=1)
        ref = KMeans(8, init=start.numpy().reshape(-1, 1), n_init=1, max_iter=300, tol=0,
                     algorithm="lloyd").fit(values.double().numpy().reshape(-1, 1))
        theirs = torch.from_numpy(ref.cluster_centers_.flatten()).float().sort().values
        assert torch.allclose(ours, theirs, atol=1e-5), init
        # every value sits with its nearest centroid
        nearest = (values[:, None] - ours[None, :]).abs().argmin(1)
        assert bool((nearest == codes).float().mean() > 0.999)


def test_initialisations_are_the_papers():
    values = torch.arange(1000, dtype=torch.float32) ** 2
    linear = initial_centroids(values, 5, "linear")
    assert float(linear[0]) == 0 and float(linear[-1]) == 999**2 and torch.allclose(linear.diff(), linear.diff()[0])
    density = initial_centroids(values, 4, "density")  # quantiles 1/8, 3/8, 5/8, 7/8
    assert torch.allclose(density.sqrt(), torch.tensor([124.875, 374.625, 624.375, 874.125], dtype=torch.float64),
                          atol=0.01)
    random = initial_centroids(values, 6, "random", seed=3)
    assert set(random.tolist()) <= set(values.double().tolist()) and random.unique().numel() == 6
    with pytest.raises(ConfigError, match="distinct values"):
        initial_centroids(torch.zeros(10), 3, "random")


@pytest.mark.parametrize("bits", range(1, 9))
def test_a_codebook_of_2_to_the_bits_values_takes_bits_per_code(bits):
    assert code_bits(2**bits) == bits


def test_a_shared_layer_decodes_its_codebook_and_sums_gradients_per_centroid():
    torch.manual_seed(0)
    linear = nn.Linear(20, 7)
    centroids, codes = kmeans_1d(linear.weight, 16)
    shared = SharedLinear(linear, 16)
    shared.set_codes(codes, centroids)
    assert torch.equal(shared.dense_weight(), centroids[codes])
    x = torch.randn(5, 20)
    out = shared(x)
    dense = nn.Linear(20, 7)
    with torch.no_grad():
        dense.weight.copy_(centroids[codes])
        dense.bias.copy_(linear.bias)
    assert torch.allclose(out, dense(x), atol=1e-6)
    out.square().sum().backward()
    dense(x).square().sum().backward()
    expected = torch.zeros(16).index_add_(0, codes.flatten(), dense.weight.grad.flatten())
    assert torch.allclose(shared.codebook.grad, expected, atol=1e-5)
    assert shared.stored_bytes() == math.ceil(140 * 4 / 8) + 16 * 4


def test_a_pruned_layer_keeps_its_zeros_exact_and_untrained():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        conv.weight[conv.weight.abs() < 0.1] = 0
    zeros = conv.weight == 0
    nonzero = conv.weight[~zeros]
    centroids, index = kmeans_1d(nonzero, 7)
    codes = torch.zeros(conv.weight.shape, dtype=torch.int64)
    codes[~zeros] = index + 1
    shared = SharedConv2d(conv, 8, fixed_zero=True)
    shared.set_codes(codes, torch.cat([torch.zeros(1), centroids]))
    optimizer = torch.optim.SGD(shared.parameters(), lr=0.5)
    shared(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    weight = shared.dense_weight()
    assert torch.equal(weight == 0, zeros) and weight[~zeros].unique().numel() <= 7
    assert shared.codebook.numel() == 7  # the zero is not a stored, trainable value


def test_the_cluster_step_cuts_bytes_keeps_accuracy_and_reloads(tmp_path, rebuild_run_step):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 30}}, "measure": MEASURE,
              "steps": [{"cluster": {"clusters": 16, "finetune": {"epochs": 2, "lr": 1e-4}}}]}
    base, step = run_recipe(recipe, tmp_path / "run").results["steps"]
    info = step["info"]
    assert info["layers_shared"] == 3 and info["encoded_ratio"] < 0.14  # 4-bit codes + codebooks
    assert step["metrics"]["size_bytes"] < base["metrics"]["size_bytes"] / 6
    assert step["metrics"]["quality"] >= base["metrics"]["quality"] - 0.01
    rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-mlp", 1, step)
    assert quality == pytest.approx(step["metrics"]["quality"], abs=1e-9)
    for module in rebuilt.modules():
        if isinstance(module, SharedLinear):
            assert module.dense_weight().unique().numel() <= 16
    # the Huffman-coded file beside the checkpoint decodes to the checkpoint, in fewer bytes
    from slimkit.core.io import load_state_dict
    from slimkit.techniques.sharing.entropy import read_archive

    checkpoint = tmp_path / "run" / step["artifact"]
    archive = checkpoint.parent / info["entropy_coded"]["file"]
    assert archive.stat().st_size == info["entropy_coded"]["bytes"] < checkpoint.stat().st_size
    decoded, saved = read_archive(archive, rebuilt), load_state_dict(checkpoint)
    assert decoded.keys() == saved.keys() and all(torch.equal(decoded[k], v) for k, v in saved.items())


def test_clustering_a_pruned_model_keeps_it_pruned(tmp_path):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 10}}, "measure": MEASURE,
              "steps": [{"prune": {"sparsity": 0.8, "finetune": {"epochs": 1}}}, {"cluster": {"clusters": 8, "finetune": {"epochs": 1}}}]}
    _, pruned, shared = run_recipe(recipe, tmp_path / "run").results["steps"]
    assert all(v["fixed_zero"] for v in shared["info"]["layers"].values())
    from slimkit.core.io import load_state_dict

    state = load_state_dict(tmp_path / "run" / shared["artifact"])
    codes = {k: v for k, v in state.items() if k.endswith("weight_codes")}
    assert len(codes) == 3 and all(v.dtype == torch.uint8 for v in codes.values())
    assert shared["metrics"]["quality"] >= pruned["metrics"]["quality"] - 0.03


def test_a_shared_model_runs_in_onnx_runtime(tmp_path):
    from slimkit.backends.onnxruntime import export_onnx, load_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)).eval()
    for i, k in ((0, 4), (3, 16)):
        centroids, codes = kmeans_1d(model[i].weight, k)
        twin = (SharedConv2d if i == 0 else SharedLinear)(model[i], k)
        twin.set_codes(codes, centroids)
        model[i] = twin
    x = torch.randn(2, 1, 8, 8)
    built = load_onnx(export_onnx(model, (x,), tmp_path / "m.onnx"), threads=1)
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(built.run(x)), model(x), atol=1e-5)


def test_cluster_misconfigurations_name_the_problem(tmp_path):
    def run(steps):
        recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 1}}, "measure": MEASURE,
                  "steps": steps}
        run_recipe(recipe, tmp_path / f"run{len(list(tmp_path.iterdir()))}")

    with pytest.raises(ConfigError, match="already shared"):
        run([{"cluster": {}}, {"cluster": {}}])
    with pytest.raises(ConfigError, match="skip names no module"):
        run([{"cluster": {"skip": ["nope"]}}])
    with pytest.raises(ConfigError, match="quantized"):
        run([{"quantize": {}}, {"cluster": {}}])
    with pytest.raises(Exception, match="less than or equal to 256"):
        run([{"cluster": {"clusters": 300}}])


# ------------------------------------------------------------------------------ entropy coding
from slimkit.techniques.sharing import entropy  # noqa: E402


@pytest.mark.parametrize("symbols", [
    torch.randint(16, (5000,)).numpy(),
    torch.distributions.Geometric(0.3).sample((5000,)).long().numpy(),  # skewed, many symbols
    torch.full((100,), 7).numpy(),  # one symbol
    torch.zeros(0, dtype=torch.long).numpy(),
])
def test_huffman_decode_of_encode_is_the_input_and_costs_within_one_bit_of_the_entropy(symbols):
    import numpy as np

    alphabet, lengths, stream = entropy.huffman_encode(symbols)
    assert np.array_equal(entropy.huffman_decode(alphabet, lengths, stream, symbols.size), symbols)
    if symbols.size and len(alphabet) > 1:
        p = np.bincount(np.searchsorted(alphabet, symbols)) / symbols.size
        h = float(-(p * np.log2(p)).sum())
        mean_length = float((p * lengths).sum())
        assert h <= mean_length < h + 1  # Huffman's bound
        assert len(stream) == math.ceil(float((np.bincount(np.searchsorted(alphabet, symbols)) * lengths).sum()) / 8)
        codes = entropy.canonical_codes(dict(zip(alphabet.tolist(), lengths.tolist())))
        words = [format(c, f"0{n}b") for c, n in codes.values()]
        assert not any(a != b and b.startswith(a) for a in words for b in words)  # prefix-free


def test_a_pruned_layers_gaps_and_codes_round_trip():
    import numpy as np

    codes = np.zeros(10_000, dtype=np.int64)
    where = np.sort(np.random.default_rng(0).choice(10_000, 800, replace=False))
    codes[where] = np.random.default_rng(1).integers(1, 16, 800)
    parts = entropy.encode_layer(codes, fixed_zero=True)
    assert np.array_equal(entropy.decode_layer(parts), codes)
    assert sum(v.nbytes for k, v in parts.items() if k.endswith("stream")) < 10_000 * 4 / 8 / 3  # far below 4 bits
    bad = dict(parts, codes_stream=parts["codes_stream"][:3])
    with pytest.raises(Exception, match="ends early"):
        entropy.decode_layer(bad)


def test_the_archive_decodes_to_the_exact_state_dict_in_fewer_bytes(tmp_path):
    from slimkit.core.io import save_state_dict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    with torch.no_grad():
        model[0].weight[model[0].weight.abs() < 0.08] = 0  # ~85% pruned
    centroids, index = kmeans_1d(model[0].weight[model[0].weight != 0], 15)
    codes = torch.zeros(model[0].weight.shape, dtype=torch.int64)
    codes[model[0].weight != 0] = index + 1
    first = SharedLinear(model[0], 16, fixed_zero=True)
    first.set_codes(codes, torch.cat([torch.zeros(1), centroids]))
    model[0] = first
    centroids, codes = kmeans_1d(model[2].weight, 4)
    second = SharedLinear(model[2], 4)
    second.set_codes(codes, centroids)
    model[2] = second
    info = entropy.write_archive(tmp_path / "m.huffman.safetensors", model)
    assert info["coded_layers"] == 2
    plain = save_state_dict(tmp_path / "m.safetensors", model.state_dict()).stat().st_size
    assert info["bytes"] < plain
    state = entropy.read_archive(tmp_path / "m.huffman.safetensors", model)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # a hostile file names what is wrong instead of allocating, wrapping around or tracing back
    from slimkit.core.errors import CheckpointError
    from slimkit.core.io import load_state_dict

    good = load_state_dict(tmp_path / "m.huffman.safetensors")
    for key, value, message in [("0.weight_huffman.count", torch.tensor([10**12]), "expected 5000"),
                                ("0.weight_huffman.nonzeros", torch.tensor([6000]), "inconsistent counts"),
                                ("0.weight_huffman.gaps_symbols", -good["0.weight_huffman.gaps_symbols"] - 1,
                                 "negative"),
                                ("2.weight_huffman.codes_symbols", good["2.weight_huffman.codes_symbols"] + 9,
                                 "codes must lie"),
                                ("0.weight_huffman.codes_lengths", None, "malformed")]:
        bad = dict(good)
        if value is None:
            del bad[key]
        else:
            bad[key] = value
        save_state_dict(tmp_path / "bad.safetensors", bad)
        with pytest.raises(CheckpointError, match=message):
            entropy.read_archive(tmp_path / "bad.safetensors", model)


# ----------------------------------------------------------------------------------- HashedNets
from slimkit.techniques.sharing.hashing import HashedLinear, hash_indices  # noqa: E402


def test_hash_indices_are_deterministic_spread_and_signed():
    bucket, sign = hash_indices(80_000, 1000, seed=3)
    again, _ = hash_indices(80_000, 1000, seed=3)
    assert torch.equal(bucket, again) and not torch.equal(bucket, hash_indices(80_000, 1000, seed=4)[0])
    assert int(bucket.min()) >= 0 and int(bucket.max()) < 1000
    counts = torch.bincount(bucket, minlength=1000).float()
    assert float(counts.min()) > 40 and float(counts.max()) < 125  # about 80 each
    assert set(sign.unique().tolist()) == {-1.0, 1.0} and abs(float(sign.mean())) < 0.02


def test_a_hashed_layer_decodes_its_vector_and_sums_signed_gradients():
    torch.manual_seed(0)
    linear = nn.Linear(30, 20)
    hashed = HashedLinear(linear, stored=75, seed=1)
    bucket, sign = hash_indices(600, 75, seed=1)
    truth = torch.randn(75)
    hashed.project_((truth[bucket] * sign).reshape(20, 30))  # an exactly representable weight comes back
    assert torch.allclose(hashed.hashed_weight, truth, atol=1e-6)
    x = torch.randn(4, 30)
    out = hashed(x)
    dense = nn.Linear(30, 20)
    with torch.no_grad():
        dense.weight.copy_((truth[bucket] * sign).reshape(20, 30))
        dense.bias.copy_(linear.bias)
    assert torch.allclose(out, dense(x), atol=1e-6)
    out.square().sum().backward()
    dense(x).square().sum().backward()
    expected = torch.zeros(75).index_add_(0, bucket, dense.weight.grad.flatten() * sign)
    assert torch.allclose(hashed.hashed_weight.grad, expected, atol=1e-5)
    assert sum(p.numel() for p in hashed.parameters()) == 75 + 20


def test_the_hash_step_trains_an_eighth_of_the_weights_and_reloads(tmp_path, rebuild_run_step):
    from slimkit.backends.onnxruntime import export_onnx, load_onnx

    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 20}}, "measure": MEASURE,
              "steps": [{"hash": {"compression": 0.125, "finetune": {"epochs": 20, "lr": 2e-3}}}]}
    base, step = run_recipe(recipe, tmp_path / "run").results["steps"]
    layers = step["info"]["layers"]
    assert all(abs(v["stored"] / v["virtual"] - 0.125) < 0.01 for v in layers.values())
    assert step["metrics"]["size_bytes"] < 0.2 * base["metrics"]["size_bytes"]
    assert step["metrics"]["quality"] >= 0.85  # trained from scratch on 1/8 of the weights (baseline ~0.97)
    rebuilt, quality = rebuild_run_step(tmp_path / "run", "digits-mlp", 1, step)
    assert quality == pytest.approx(step["metrics"]["quality"], abs=1e-9)
    x = torch.randn(3, 64)
    built = load_onnx(export_onnx(rebuilt, (x,), tmp_path / "h.onnx"), threads=1)
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(built.run(x)), rebuilt(x), atol=1e-5)
    assert (tmp_path / "h.onnx").stat().st_size < 0.3 * 4 * sum(v["virtual"] for v in layers.values())


def test_hash_refuses_an_encoded_model(tmp_path):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 1}}, "measure": MEASURE,
              "steps": [{"cluster": {}}, {"hash": {"finetune": {"epochs": 0}}}]}
    with pytest.raises(ConfigError, match="hash a dense model"):
        run_recipe(recipe, tmp_path / "run")
