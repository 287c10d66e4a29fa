"""Configuration shared by the ranking trainers (`PROConfig`, `RRHFConfig`): model, data and loss-core options."""

from dataclasses import dataclass, field
from typing import Any

from trl.trainer.base_config import _BaseConfig


@dataclass
class RankingConfig(_BaseConfig):
    r"""
    Parameters shared by every ranking trainer ([`PROTrainer`], [`RRHFTrainer`]); each method's config adds its own.

    Parameters:
        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for `AutoModelForCausalLM.from_pretrained`, used when the `model` argument of the
            trainer is provided as a string.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to allow models and tokenizers that ship custom code.
        router_aux_loss_coef (`float`, *optional*):
            Coefficient of the load-balancing auxiliary loss for Mixture-of-Experts (MoE) models, added to the training
            loss with this weight (as in `DPOConfig`). When not set, the value declared by the model config is used.
            Set to `0.0` to disable it. Fails when used with a non-MoE model.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Whether to disable dropout in the model, so that candidate scores are deterministic.

        > Parameters that control the data preprocessing

        dataset_num_proc (`int`, *optional*):
            Number of processes used to tokenize the dataset.
        max_length (`int` or `None`, *optional*, defaults to `512`):
            Maximum length of prompt + completion, in tokens (the paper uses 512). Completions are truncated from the
            right to fit. `None` disables truncation.
        max_prompt_length (`int` or `None`, *optional*):
            Prompts are truncated from the left to keep their last `max_prompt_length` tokens. `None` (the default)
            adapts to `max_length`: `max(max_length - 128, max_length // 2)` (384 for 512: the authors' code keeps
            `max_length - 128`; the `max_length // 2` floor leaves room for a completion when `max_length` is small),
            and no prompt truncation when `max_length` is `None`. `-1` disables prompt truncation: a prompt that
            leaves no room for a completion within `max_length` is then an error. An explicit value must be smaller
            than `max_length`.
        max_completions (`int` or `None`, *optional*):
            Use at most the best `max_completions` candidates of each ranking (the paper's ranking length). `None`
            uses all of them.
        pad_to_multiple_of (`int`, *optional*):
            If set, sequences are padded to a multiple of this value.
        drop_invalid_rows (`bool`, *optional*, defaults to `False`):
            By default a row the trainer cannot use (see `trl_pro.data.formats`) raises a `ValueError` naming the row and the field.
            With `True`, such rows are dropped instead, and the trainer logs how many and the first reason.

        > Parameters that control the training

        loss_implementation (`str`, *optional*, defaults to `"auto"`):
            Loss core to use: `"triton"` (fused kernels), `"torch"` (chunked torch twin), or `"auto"` (Triton on CUDA
            when it imports, torch otherwise). All give the same loss and gradients.
        shared_prompt (`bool` or `str`, *optional*, defaults to `"auto"`):
            Put each prompt through the model once for all of its candidates: each ranking is one row [prompt,
            candidate 1, ..., candidate n] with a mask that lets each candidate see the prompt and itself only
            (`trl_pro.loss_core.shared_prompt`). Same loss and gradients as the plain layout (one row per candidate). `True`:
            use it (falls back to the plain layout with a warning if the attention backend takes no custom mask, e.g.
            flash-attention 2); `False`: plain layout; `"auto"`: shared when the backend allows it, silently plain
            otherwise. `"auto"` is the default because the shared layout was faster at every ranking length measured
            (benchmarks/shared_prompt.py: same loss and gradients, fewer tokens, less memory); its cost is a dense
            [L, L] mask per ranking with sdpa/eager.

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`]:
    > - `logging_steps`: Defaults to `10` instead of `500`.
    > - `gradient_checkpointing`: Defaults to `True` instead of `False`.
    > - `bf16`: Defaults to `True` if `fp16` is not set, instead of `False`.
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    # Parameters that control the model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained`, used when the `model` argument of "
            "the trainer is provided as a string."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Whether to allow models and tokenizers that ship custom code."}
    )
    router_aux_loss_coef: float | None = field(
        default=None,
        metadata={
            "help": "Coefficient of the load-balancing auxiliary loss for Mixture-of-Experts (MoE) models, added to "
            "the training loss with this weight. When not set, the value declared by the model config is used. Set "
            "to `0.0` to disable it. Fails when used with a non-MoE model."
        },
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Whether to disable dropout in the model."})

    # Parameters that control the data preprocessing
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Number of processes to use for processing the dataset."}
    )
    max_length: int | None = field(
        default=512,
        metadata={
            "help": "Maximum length of prompt + completion in tokens; completions are truncated from the right. "
            "None disables truncation."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Prompts keep their last `max_prompt_length` tokens (left truncation). None (default): adapts to "
            "`max_length` as max(max_length - 128, max_length // 2), e.g. 384 for 512 (the authors keep "
            "max_length - 128), no truncation if `max_length` is None. -1: no prompt truncation, and a prompt "
            "leaving no room for a completion within `max_length` is an error."
        },
    )
    max_completions: int | None = field(
        default=None,
        metadata={"help": "Use at most the best N candidates of each ranking (the ranking length). None: all."},
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "If set, sequences are padded to a multiple of this value."}
    )

    drop_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Drop rows the trainer cannot use (empty completion, fewer than 2 candidates, bad scores, ...) and log "
            "how many, instead of raising an error naming the row and the field."
        },
    )

    # Parameters that control the training
    loss_implementation: str = field(
        default="auto",
        metadata={
            "help": "Loss core: 'triton' (fused kernels), 'torch' (chunked torch), or 'auto' (Triton on CUDA when "
            "available, torch otherwise).",
            "choices": ["auto", "triton", "torch"],
        },
    )
    shared_prompt: str = field(
        default="auto",
        metadata={
            "help": "Put each prompt through the model once for all its candidates (one packed row per ranking, "
            "same loss and gradients): True, False, or 'auto' (shared when the attention backend takes a custom "
            "mask: sdpa, eager, flex_attention; plain otherwise). Default 'auto': faster and lighter at every "
            "ranking length measured (benchmarks/shared_prompt.py)."
        },
    )

    def __post_init__(self):
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        check(
            self.loss_implementation in ("auto", "triton", "torch"),
            f"`loss_implementation` must be 'auto', 'triton' or 'torch', got {self.loss_implementation!r}.",
        )
        if isinstance(self.shared_prompt, str) and self.shared_prompt.lower() in ("true", "false"):
            self.shared_prompt = self.shared_prompt.lower() == "true"  # from the command line or YAML
        check(
            self.shared_prompt in (True, False, "auto"),
            f"`shared_prompt` must be True, False or 'auto', got {self.shared_prompt!r}.",
        )
        check(
            self.max_completions is None or self.max_completions >= 2,
            f"`max_completions` must be >= 2 (a ranking needs two candidates) or None, got {self.max_completions}.",
        )
        check(self.max_length is None or self.max_length >= 2, f"`max_length` must be >= 2, got {self.max_length}.")
        check(
            self.max_prompt_length is None or self.max_prompt_length == -1 or self.max_prompt_length >= 1,
            f"`max_prompt_length` must be >= 1, None (adapts to `max_length`) or -1 (no prompt truncation), got "
            f"{self.max_prompt_length}.",
        )
        # Only a value the user set is checked against `max_length`: the default adapts to it
        if self.max_length is not None and self.max_prompt_length not in (None, -1):
            check(
                self.max_prompt_length < self.max_length,
                f"`max_prompt_length` ({self.max_prompt_length}) must be smaller than `max_length` "
                f"({self.max_length}) to leave room for the completions.",
            )
        super().__post_init__()
