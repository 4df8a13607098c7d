"""Model -> model transforms, one family per folder. Importing this package registers them."""

from slimkit.techniques import fusion  # noqa: F401
from slimkit.techniques.quantization import step as _quantization_step  # noqa: F401
from slimkit.techniques.pruning import step as _pruning_step  # noqa: F401
from slimkit.techniques.pruning import structured_step as _structured_pruning_step  # noqa: F401
from slimkit.techniques.distillation import step as _distillation_step  # noqa: F401
from slimkit.techniques.sharing import step as _sharing_step  # noqa: F401
from slimkit.techniques.sharing import hash_step as _hash_step  # noqa: F401
from slimkit.techniques.lowrank import step as _lowrank_step  # noqa: F401
from slimkit.techniques.lowrank import lora_step as _lora_step  # noqa: F401
from slimkit.techniques.sparse_training import step as _sparse_training_step  # noqa: F401
from slimkit.techniques.sparse_training import l0_step as _l0_step  # noqa: F401
from slimkit.techniques.bayesian import step as _bayesian_step  # noqa: F401
from slimkit.techniques.bayesian import compression_step as _bayesian_compression_step  # noqa: F401
from slimkit.techniques.dynamic import exit_step as _exit_step  # noqa: F401
from slimkit.techniques.dynamic import act as _act  # noqa: F401  (registers act_rnn)
from slimkit.techniques.dynamic import skip_step as _skip_step  # noqa: F401
