"""PROTrainer: Preference Ranking Optimization on TRL's trainer base, shaped like TRL's `DPOTrainer`.

`RankingTrainer` owns the machinery every ranking objective shares (data formats, validation, tokenization, layout,
the fused loss core, metrics, model card); `PROTrainer` and `trl_pro.trainers.rrhf_trainer.RRHFTrainer` are thin subclasses
that name their config, objective (`trl_pro.objectives`), SFT weight and paper.
"""

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from accelerate.logging import get_logger
from accelerate.utils import is_peft_model
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from transformers import (
    AutoProcessor,
    BitsAndBytesConfig,
    DataCollator,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalPrediction, rotate_checkpoints
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import (
    create_model_from_path,
    disable_dropout_in_model,
    get_config_model_id,
    global_then_local_main_first,
)

from trl_pro.data.collator import DataCollatorForRanking
from trl_pro.data.formats import SCORE_COLUMNS, detect_format, rank, to_ranking
from trl_pro.data.layout import RankingLayout
from trl_pro.data.tokenization import tokenize_ranking
from trl_pro.loss_core.head import add_ranking_loss_head
from trl_pro.loss_core.shared_prompt import resolve_shared_prompt
from trl_pro.objectives.base import RankingObjective
from trl_pro.trainers.checkpointing import (
    CHECKPOINT_COMPLETE,
    RANKING_STATE_NAME,
    last_complete_checkpoint,
)
from trl_pro.trainers.ranking_config import RankingConfig
from trl_pro.trainers.ranking_metrics import ranking_metrics_per_prompt, reference_ranks
from trl_pro.utils.io import atomic_write_json


try:
    from peft import PeftConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
except ImportError:  # peft is a dependency, but keep the error for a broken install at the point of use
    PeftConfig = get_peft_model = BaseTunerLayer = None


logger = get_logger(__name__)


def _column(dataset: Dataset, name: str):
    """One column of a `Dataset` as Arrow, through its indices mapping: `dataset.data` would ignore what `filter`,
    `select` or `shuffle` left behind and return the rows of the underlying table."""
    return dataset.with_format("arrow")[name]


def _get_peft_model_kwargs(args: RankingConfig, is_quantized: bool) -> dict:
    """Keyword arguments of `get_peft_model`, as in DPOTrainer.

    ZeRO-3 + PEFT on a non-quantized model: PEFT upcasts the adapters to fp32 by default, and ZeRO-3 allocates its
    all-gather buffers with the dtype of the first persistent parameter, so mixed dtypes (bf16 base, fp32 adapters)
    fail at the first optimizer step (trl#6089, DeepSpeed#8072). Keep the adapters in the base model's dtype.
    """
    if args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3 and not is_quantized:
        return {"autocast_adapter_dtype": False}
    return {}


def _use_reentrant_checkpointing_for_zero3_peft(args: RankingConfig, model) -> None:
    """PEFT + DeepSpeed ZeRO-3 + gradient checkpointing requires reentrant checkpointing (trl#2514), as in
    DPOTrainer: force `use_reentrant=True`, with a warning if the user asked for `False`."""
    if not (
        is_peft_model(model)
        and args.deepspeed_plugin is not None
        and args.deepspeed_plugin.zero_stage == 3
        and args.gradient_checkpointing
    ):
        return
    args.gradient_checkpointing_kwargs = args.gradient_checkpointing_kwargs or {}
    if args.gradient_checkpointing_kwargs.get("use_reentrant") is False:
        logger.warning(
            "You are using PEFT with DeepSpeed ZeRO-3 and gradient checkpointing with `use_reentrant=False`. "
            "`use_reentrant` is forced to `True` in this configuration to ensure correct training. To remove this "
            "warning, unset `use_reentrant` in `gradient_checkpointing_kwargs` or set it to `True`."
        )
    args.gradient_checkpointing_kwargs["use_reentrant"] = True


class RankingTrainer(_BaseTrainer):
    """
    Base of the trainers of ranking objectives ([`PROTrainer`], [`RRHFTrainer`], [`ListDPOTrainer`]): for each
    prompt, candidates ranked best to worst (by reward-model scores when the data has them) are scored by the model in
    one forward and trained with the subclass's objective. No reward model is needed during training, and a reference
    model only where the objective has one ([`ListDPOTrainer`]).

    A subclass sets `config_class`, `_name`, `_paper`, `_tag_names` and implements `_objective` (the loss, a
    `trl_pro.objectives.base.RankingObjective`), `_sft_weight` (weight of the SFT term per prompt) and `_uses_rewards`.

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            Model to train: a hub id or local path (loaded with `args.model_init_kwargs`; dtype defaults to float32),
            or an instantiated causal language model, possibly a PEFT model.
        args ([`PROConfig`], [`RRHFConfig`], *optional*):
            Configuration for this trainer (`config_class`). If `None`, a default configuration is used.
        data_collator (`DataCollator`, *optional*):
            Defaults to [`~trl_pro.data.collator.DataCollatorForRanking`]. A custom collator must produce the same keys.
        train_dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            Rankings, TRL preference pairs or the PRO authors' format, standard or conversational (see
            `trl_pro.data.formats`).
        eval_dataset (*optional*):
            Same formats as `train_dataset`, or a dict of them.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer. Loaded from the model if `None`; its EOS token pads if it has no pad token.
        compute_metrics (`Callable[[EvalPrediction], dict]`, *optional*):
            Called at evaluation, as in [`~transformers.Trainer`], with an `EvalPrediction` of one row per prompt:
            `predictions` are the candidate scores [N, n_max] (mean token log-prob, fp32) in reference rank order, best
            first, and `label_ids` the reference ranks [N, n_max] (int64, 0 = best; candidates tied in reward share
            the better rank; without rewards, the position). Padding candidates are -100 in both, the value `Trainer`
            pads with across batches and processes: `label_ids >= 0` is the candidate mask. The built-in ranking
            metrics are logged whether or not it is set.
        callbacks, optimizers:
            As in [`~transformers.Trainer`].
        quantization_config ([`~transformers.BitsAndBytesConfig`], *optional*):
            Used when loading the model from a string; combine with `peft_config` for QLoRA.
        peft_config ([`~peft.PeftConfig`], *optional*):
            PEFT configuration used to wrap the model.
    """

    _tag_names = ["trl", "trl-pro"]
    config_class: type[RankingConfig] = RankingConfig

    # In training, `compute_loss` divides the summed loss of its prompts by `num_items_in_batch`, the number of prompts
    # of the whole optimizer step (every accumulation micro-batch, every process), like TRL's SFT does for tokens: the
    # loss is then already scaled for gradient accumulation. Without `num_items_in_batch` it is the mean over the
    # micro-batch's prompts, which `Trainer` divides by the accumulation steps. `Trainer`'s default rule says exactly
    # this once `model_accepts_loss_kwargs` is True (set in `__init__`).
    loss_is_scaled_for_ga = None

    def __init__(
        self,
        model: "str | PreTrainedModel",
        args: RankingConfig | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset
        | IterableDataset
        | DatasetDict
        | IterableDatasetDict
        | dict[str, Dataset | IterableDataset]
        | None = None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        quantization_config: BitsAndBytesConfig | None = None,
        peft_config: "PeftConfig | None" = None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = self.config_class(f"{model_name.split('/')[-1]}-{self._name}")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if isinstance(train_dataset, IterableDataset):
            # Accelerate's dispatch mode concatenates batches across processes, which breaks ragged rankings
            args.accelerator_config.dispatch_batches = False

        # Model. PEFT initializes adapters randomly, so seed before creating the model, as TRL does
        set_seed(args.seed)
        model = self._create_model(model, args, quantization_config)
        processing_class = self._prepare_processing_class(model, processing_class, args)
        model = self._prepare_peft_model(model, peft_config, args)
        # The rows as given, before tokenization: self-bootstrapping re-ranks them round by round
        self.raw_train_dataset = train_dataset if getattr(args, "bootstrap_rounds", 0) else None
        self._checkpoint_subdir = None  # set by `train_part`: each part checkpoints into a folder of its own
        self._step_offset, self._expected_part_steps = 0, None  # set by `train_part`: steps go on across parts
        self.loss_implementation_used = None  # the loss core's path that ran: "triton", "torch" or "trl"
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if eval_dataset is not None:
            if isinstance(eval_dataset, dict):
                eval_dataset = {
                    key: self._prepare_dataset(dataset, processing_class, args, key)
                    for key, dataset in eval_dataset.items()
                }
            else:
                eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")
        if data_collator is None:
            data_collator = DataCollatorForRanking(
                pad_token_id=processing_class.pad_token_id,
                pad_to_multiple_of=args.pad_to_multiple_of,
                shared_prompt=resolve_shared_prompt(args.shared_prompt, model),
            )

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
        )

        self._set_router_aux_loss(args)

        # See `loss_is_scaled_for_ga`: `compute_loss` normalizes by `num_items_in_batch` whenever it gets one
        self.model_accepts_loss_kwargs = True

        if args.disable_dropout:
            disable_dropout_in_model(self.model)
        add_ranking_loss_head(self.model.get_base_model() if is_peft_model(self.model) else self.model)

        # (sum, count) of every metric since the last log: a partial batch weighs by its size, not as a full one
        self._metrics = {"train": defaultdict(lambda: [0.0, 0.0]), "eval": defaultdict(lambda: [0.0, 0.0])}
        self._total_train_tokens = 0
        self.model.add_model_tags(self._tag_names)

    @staticmethod
    def _create_model(model, args: RankingConfig, quantization_config):
        """The model: loaded from a hub id or path with `model_init_kwargs` (and `quantization_config`), or as given."""
        if isinstance(model, str):
            model_init_kwargs = dict(args.model_init_kwargs or {})
            if quantization_config is not None:
                if "quantization_config" in model_init_kwargs:
                    raise ValueError(
                        "You set `quantization_config` both as a trainer argument and in `args.model_init_kwargs`."
                    )
                model_init_kwargs["quantization_config"] = quantization_config
            if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"] and not (
                "quantization_config" in model_init_kwargs and "device_map" in model_init_kwargs
            ):
                # Distributed training requires device_map=None ("auto" fails), except a k-bit model, which can't be
                # moved after loading: keep its per-process map (TRL's `get_kbit_device_map`)
                model_init_kwargs["device_map"] = None
            model_init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            model = create_model_from_path(model, **model_init_kwargs)
        else:
            if args.model_init_kwargs is not None:
                logger.warning("`model_init_kwargs` is ignored: the model is already instantiated.")
            if quantization_config is not None:
                raise ValueError(
                    "`quantization_config` only applies when the model is given as a string (hub id or path)."
                )

        return model

    @staticmethod
    def _prepare_processing_class(model, processing_class, args: RankingConfig):
        """The tokenizer (the model's own when none is given), with a pad token shared with the model's config."""
        if processing_class is None:
            processing_class = AutoProcessor.from_pretrained(
                get_config_model_id(model.config), trust_remote_code=args.trust_remote_code
            )
        if not isinstance(processing_class, PreTrainedTokenizerBase):
            raise TypeError("`processing_class` must be a tokenizer (`PreTrainedTokenizerBase`).")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        model.config.get_text_config().pad_token_id = processing_class.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = processing_class.pad_token_id

        return processing_class

    @staticmethod
    def _prepare_peft_model(model, peft_config, args: RankingConfig):
        """The model with `peft_config`'s adapter (or its own), checked and set for training as TRL sets it."""
        is_quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
        if peft_config is not None:
            if get_peft_model is None:
                raise ImportError("`peft_config` needs the `peft` library: `pip install peft`.")
            if is_peft_model(model):
                raise ValueError(
                    "You passed a `PeftModel` together with a `peft_config`. Merge and unload the existing adapter "
                    "first, or pass the PeftModel without `peft_config`."
                )
            model = get_peft_model(model, peft_config, **_get_peft_model_kwargs(args, is_quantized))
        _use_reentrant_checkpointing_for_zero3_peft(args, model)
        if is_peft_model(model):
            if isinstance(model.get_output_embeddings(), BaseTunerLayer):
                raise ValueError(
                    "A PEFT adapter on `lm_head` is not supported: the loss core multiplies by `lm_head.weight` "
                    "directly, so the adapter would never be trained. Remove 'lm_head' from `target_modules`."
                )
            if args.gradient_checkpointing:
                # Checkpointed blocks need an input that requires grad when every base weight is frozen
                model.enable_input_require_grads()
            if is_quantized:
                # QLoRA: adapters in bf16, as recommended by the QLoRA paper and done by TRL
                for name, param in model.named_parameters():
                    if param.requires_grad and "lora_magnitude_vector" not in name:
                        param.data = param.data.to(torch.bfloat16)
        if is_quantized:
            # On an AVX512-BF16 CPU, bitsandbytes repacks a 4-bit weight for an inference-only kernel (no autograd)
            # on its first eval-mode forward and never unpacks it: training steps after an evaluation then send wrong
            # gradients to the adapters. Keep the ordinary dequantizing path; no effect on GPU.
            for module in model.modules():
                if getattr(module, "support_avx512bf16_for_cpu", False):
                    module.support_avx512bf16_for_cpu = False

        return model

    def _set_router_aux_loss(self, args: RankingConfig) -> None:
        """Whether and how much the MoE router's load-balancing loss adds to the loss."""
        # MoE load-balancing auxiliary loss, as in DPOTrainer: `output_router_logits` in the config means the model
        # returns its router logits; `router_aux_loss_coef` is the architecture's own coefficient, 0.0 when the config
        # declares none
        text_config = self.model.config.get_text_config()
        coef = args.router_aux_loss_coef
        self.router_aux_loss_coef = getattr(text_config, "router_aux_loss_coef", 0.0) if coef is None else coef
        if coef and not hasattr(text_config, "output_router_logits"):
            raise ValueError(
                f"`router_aux_loss_coef` is set to {coef} but {type(self.model).__name__} is not a Mixture-of-Experts "
                "model that returns its router logits, so there is no auxiliary loss to weight."
            )
        self.aux_loss_enabled = hasattr(text_config, "output_router_logits") and self.router_aux_loss_coef != 0.0

    # --- What a subclass defines ---------------------------------------------------------------------------------

    def _objective(self) -> RankingObjective:
        """The ranking objective the loss core computes (`trl_pro.objectives`)."""
        raise NotImplementedError

    def _sft_weight(self, layout: RankingLayout) -> torch.Tensor:
        """[B] weight of the SFT term of each prompt."""
        raise NotImplementedError

    def _uses_rewards(self, args: RankingConfig) -> bool:
        """Whether the objective reads the reward-model scores (when the data has them)."""
        raise NotImplementedError

    def _check_dataset_scores(self, dataset: Dataset, dataset_name: str, args: RankingConfig) -> None:
        """Warnings about the reward-model scores of a prepared dataset the objective reads."""
        self._warn_if_all_tied(dataset, dataset_name)

    def _rewards(self, inputs) -> torch.Tensor | None:
        """[C] reward-model scores of a collated batch as the objective takes them, or None."""
        return inputs.get("rewards") if self._uses_rewards(self.args) else None

    def _layout(self, inputs) -> RankingLayout:
        """The layout of a collated batch: which tokens form which candidate of which prompt, and the SFT candidate."""
        return RankingLayout(inputs["token_offsets"], inputs["ranking_offsets"], inputs["sft_candidate"])

    def _extra_loss_inputs(self, inputs, layout: RankingLayout) -> dict:
        """More keyword arguments of the loss core for a collated batch (a reference objective's `ref_logps`)."""
        return {}

    # --- Machinery -----------------------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset, processing_class, args: RankingConfig, dataset_name: str):
        """Validate, rank and tokenize a dataset once, with `datasets.map` (cached, `dataset_num_proc` workers)."""
        first = next(iter(dataset))
        column_names = list(first.keys())
        if "image" in column_names or "images" in column_names:
            raise ValueError(
                f"The {dataset_name} dataset has an {'images' if 'images' in column_names else 'image'!r} column: it "
                "is a vision dataset, and PROTrainer trains on text only (it would silently ignore the images). "
                "Remove the column to train on the text alone."
            )
        if "prompt_ids" in column_names and "completion_ids" in column_names:  # already prepared
            self._note_ranking_lengths(dataset)
            return dataset
        data_format = detect_format(column_names)
        score_column = SCORE_COLUMNS[data_format]
        expect_scores = first.get(score_column) is not None

        map_kwargs = {}
        if isinstance(dataset, Dataset):  # `IterableDataset.map` takes neither num_proc nor desc
            map_kwargs["num_proc"] = args.dataset_num_proc
            map_kwargs["desc"] = f"Ranking and tokenizing {dataset_name} dataset"

        def prepare(example, index):
            try:
                ranking = rank(to_ranking(example, index, data_format, expect_scores), index, args.max_completions)
                tokens = tokenize_ranking(ranking, index, processing_class, args.max_length, args.max_prompt_length)
            except ValueError as error:
                if not args.drop_invalid_rows:
                    raise
                invalid = {"prompt_ids": [], "completion_ids": [], "scores": None, "sft_index": 0}
                return {**invalid, "invalid_reason": str(error)}
            prepared = {**tokens, "scores": ranking["scores"], "sft_index": ranking["sft_index"]}
            return {**prepared, "invalid_reason": ""} if args.drop_invalid_rows else prepared

        with global_then_local_main_first():
            dataset = dataset.map(prepare, with_indices=True, remove_columns=column_names, **map_kwargs)
            if args.drop_invalid_rows:
                dataset = self._drop_invalid_rows(dataset, dataset_name)
        if expect_scores and self._uses_rewards(args) and isinstance(dataset, Dataset):
            self._check_dataset_scores(dataset, dataset_name, args)
        self._note_ranking_lengths(dataset)
        return dataset

    @staticmethod
    def _drop_invalid_rows(dataset, dataset_name: str):
        """`drop_invalid_rows=True`: remove the rows `prepare` marked, and say how many and why."""
        if isinstance(dataset, Dataset):
            reasons = [reason for reason in _column(dataset, "invalid_reason").to_pylist() if reason]
            if reasons:
                logger.warning(
                    f"Dropped {len(reasons)} of {len(dataset)} rows of the {dataset_name} dataset that PRO cannot use "
                    f"(`drop_invalid_rows=True`); first: {reasons[0]}",
                    main_process_only=True,
                )
                dataset = dataset.filter(lambda reason: not reason, input_columns="invalid_reason")
        else:  # streaming: the count is only known as rows stream by, so each drop is logged

            def keep(reason):
                if reason:
                    logger.warning(f"Dropped a row of the {dataset_name} dataset: {reason}")
                return not reason

            dataset = dataset.filter(keep, input_columns="invalid_reason")
        return dataset.remove_columns("invalid_reason")

    def _warn_if_all_tied(self, dataset: Dataset, dataset_name: str) -> None:
        # An objective that reads the rewards learns no ranking from a ranking whose scores are all equal (PRO's
        # dynamic temperature makes its terms constant; RRHF forms no pair from tied candidates)
        tied = sum(1 for row in _column(dataset, "scores").to_pylist() if max(row) == min(row))
        if tied:
            logger.warning(
                f"{tied} of {len(dataset)} rankings of the {dataset_name} dataset have all candidates tied in score: "
                f"{self._name} learns no ranking from them. {self._tied_scores_hint}"
            )

    _tied_scores_hint = ""

    def _warn_if_reward_gaps_far_from_one(self, dataset: Dataset, dataset_name: str, reward_scale: float) -> None:
        """With the dynamic temperature, logits are scores * reward gap (Eq. 10): gaps far from 1 shrink (0-1 rewards)
        or sharpen the ranking term against the SFT term. Warn once per trainer, with the median gap."""
        if getattr(self, "_warned_reward_scale", False):
            return
        scores = _column(dataset, "scores")
        lengths = pc.list_value_length(scores).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(scores).to_numpy(zero_copy_only=False)
        if flat.size < 2:
            return
        gaps = flat[:-1] - flat[1:]  # candidates are sorted best first: adjacent gaps are >= 0
        within_ranking = np.ones(gaps.size, dtype=bool)
        within_ranking[np.cumsum(lengths)[:-1] - 1] = False  # the last candidate of a ranking and the next first one
        gaps = gaps[within_ranking] * reward_scale
        gaps = gaps[gaps > 0]  # ties are reported by `_warn_if_all_tied`
        if gaps.size == 0:
            return
        median = float(np.median(gaps))
        if not 0.1 <= median <= 10:
            self._warned_reward_scale = True
            logger.warning(
                f"The median gap between adjacent rewards of the {dataset_name} dataset is {median:.3g}"
                f"{' (after `reward_scale`)' if reward_scale != 1 else ''}. With the dynamic temperature "
                "(`use_temperature=True`), the reward gap multiplies the candidate scores (Eq. 10), so the ranking "
                f"gradient is {'shrunk' if median < 0.1 else 'amplified'} by about that factor relative to the SFT "
                f"term. Set `reward_scale` (e.g. {reward_scale / median:.3g}) to bring the median gap to 1, or "
                "`use_temperature=False`.",
                main_process_only=True,
            )

    def _note_ranking_lengths(self, dataset) -> None:
        """Track the longest ranking of every prepared dataset: metrics are gathered as fixed-size vectors."""
        if isinstance(dataset, Dataset):
            longest = pc.max(pc.list_value_length(_column(dataset, "completion_ids"))).as_py() or 2
        else:  # streaming: unknown without a full pass
            longest = self.args.max_completions or 16
        self._longest_ranking = max(getattr(self, "_longest_ranking", 2), longest)

    def _set_signature_columns_if_needed(self):
        # `remove_unused_columns` keeps only these: the model's forward does not name them
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "completion_ids", "scores", "sft_index", "ref_logps"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        layout = self._layout(inputs)
        rewards = self._rewards(inputs)
        sft_weight = self._sft_weight(layout)
        # MoE models: request router logits so that the forward returns `output.aux_loss`
        model_kwargs = {"output_router_logits": True} if self.aux_loss_enabled else {}
        output = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            **model_kwargs,
            ranking_inputs={
                "completion_mask": inputs["completion_mask"],
                "segment_ids": inputs.get("segment_ids"),  # shared-prompt layout (trl_pro/loss_core/shared_prompt.py)
                "layout": layout,
                "rewards": rewards,
                "sft_weight": sft_weight,
                "objective": self._objective(),
                "implementation": self.args.loss_implementation,
                **self._extra_loss_inputs(inputs, layout),
            },
        )
        if output.implementation is not None and output.implementation != self.loss_implementation_used:
            # What `loss_implementation` resolved to ("auto": Triton only once it matched the torch path here)
            logger.info(
                f"Loss core: the {output.implementation} implementation (loss_implementation="
                f"{self.args.loss_implementation!r})"
            )
            self.loss_implementation_used = output.implementation
            self.model.add_model_tags([f"loss-core-{output.implementation}"])
        weighted_aux_loss = self.router_aux_loss_coef * output.aux_loss if self.aux_loss_enabled else None
        self._record_metrics(mode, output, layout, inputs, sft_weight, weighted_aux_loss)
        loss = output.loss  # mean over the prompts of this micro-batch
        if num_items_in_batch is not None:
            # Sum over this micro-batch's prompts / prompts of the whole optimizer step: every prompt weighs the same,
            # whatever the micro-batch it falls in
            loss = loss * layout.num_prompts / num_items_in_batch
            # Like `Trainer.compute_loss`: `num_items_in_batch` counts the prompts of every process, and DDP averages
            # the gradients across processes
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if weighted_aux_loss is not None:
            # The aux loss is a per-micro-batch mean that DDP averages across processes. With `num_items_in_batch`,
            # `Trainer` leaves gradient accumulation to the loss, so average it over the accumulation steps (as SFT)
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + weighted_aux_loss / steps
        return (loss, output) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Number of prompts (rankings) of one optimizer step: summed over its micro-batches and, with
        `average_tokens_across_devices` (the default), over processes. `Trainer` counts label tokens instead, and PRO
        batches have no `labels`."""
        if not batch_samples or "ranking_offsets" not in batch_samples[0]:
            return None
        num_prompts = sum(batch["ranking_offsets"].numel() - 1 for batch in batch_samples)
        num_prompts = torch.tensor(num_prompts, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            num_prompts = self.accelerator.gather(num_prompts).sum()
        # Processes that share one batch (tensor, context or sequence parallelism) count it once, as in `Trainer`
        return num_prompts / (self.get_tp_size() * self.get_cp_size() * self.get_sp_size())

    @torch.no_grad()
    def _record_metrics(
        self, mode, output, layout: RankingLayout, inputs, sft_weight: torch.Tensor, weighted_aux_loss=None
    ) -> None:
        scores, mask = layout.to_padded(output.scores)
        rewards = inputs.get("rewards")
        rewards = None if rewards is None else layout.to_padded(rewards)[0]
        per_prompt = ranking_metrics_per_prompt(scores, mask, rewards)
        one = torch.ones_like(output.sft_nll)
        rank_terms = output.rank_terms.masked_fill(~mask[:, 1 : output.rank_terms.shape[1] + 1], 0.0)
        for k in range(rank_terms.shape[1]):
            per_prompt[f"loss/rank_{k + 1}"] = (rank_terms[:, k], mask[:, k + 1].float())
        per_prompt["loss/sft"] = (output.sft_nll, one)
        if mode == "eval":
            # Each prompt's loss, so that `eval_loss` is a mean over prompts (see `evaluation_loop`)
            prompt_loss = self._objective().rank_loss(rank_terms) + sft_weight * output.sft_nll
            if weighted_aux_loss is not None:  # a per-batch term: every prompt of the batch carries it
                prompt_loss = prompt_loss + weighted_aux_loss.detach().float()
            per_prompt["loss"] = (prompt_loss, one)
        # One row per prompt of (value, count) for every name up to the longest ranking of any dataset of this
        # trainer: a fixed width, since ranking lengths differ across processes. `gather_for_metrics` drops the rows
        # of the prompts accelerate duplicates to even out the last eval batch across processes.
        names = self._metric_names()
        values = torch.zeros(layout.num_prompts, 2, len(names), device=scores.device)
        for j, name in enumerate(names):
            if name in per_prompt:
                values[:, 0, j], values[:, 1, j] = per_prompt[name]
        totals, counts = self.accelerator.gather_for_metrics(values).sum(dim=0).tolist()
        for name, total, count in zip(names, totals, counts):
            if count > 0:
                self._metrics[mode][name][0] += total
                self._metrics[mode][name][1] += count

        if output.aux_loss is not None:
            # One value per process and batch, not per prompt: `gather` (`gather_for_metrics` would cut it to the
            # number of prompts left in the last batch)
            aux_loss = self.accelerator.gather(output.aux_loss.detach().float()[None]).mean().item()
            self._metrics[mode]["aux_loss"][0] += aux_loss
            self._metrics[mode]["aux_loss"][1] += 1

        if mode == "train":
            tokens = self.accelerator.gather(inputs["attention_mask"].sum()[None]).sum().item()
            self._total_train_tokens += tokens
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens, 1]

    def _metric_names(self) -> list[str]:
        n_max = self._longest_ranking
        names = ["loss", "ranking/top1_accuracy", "ranking/pairwise_accuracy", "ranking/kendall_tau", "loss/sft"]
        names += [f"scores/rank_{i + 1}" for i in range(n_max)]
        return names + [f"loss/rank_{k + 1}" for k in range(n_max - 1)]

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        # A dataset passed here directly gets the same preparation as in `__init__`
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            if isinstance(eval_dataset, dict):
                metrics = {}
                for name, dataset in eval_dataset.items():
                    dataset = self._prepare_dataset(dataset, self.processing_class, self.args, name)
                    metrics.update(super().evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}"))
                return metrics
            eval_dataset = self._prepare_dataset(eval_dataset, self.processing_class, self.args, "eval")
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        # `Trainer` weighs each batch's mean loss by the batch size, and keeps the whole mean of a last batch that
        # accelerate evened out with duplicate prompts on other processes. The per-prompt losses gathered with
        # `gather_for_metrics` count every prompt once.
        metrics = {name: total / count for name, (total, count) in self._metrics["eval"].items() if count > 0}
        self._metrics["eval"].clear()
        loss = metrics.pop("loss", None)
        if loss is not None and f"{metric_key_prefix}_loss" in output.metrics:
            output.metrics[f"{metric_key_prefix}_loss"] = loss
        # Named as `Trainer` names the loss: `test_ranking/...` for metric_key_prefix="test", and one set per dataset
        # of a dict eval_dataset (`eval_<name>_ranking/...`)
        output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in metrics.items()})
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Evaluation metrics are already in `logs`, under their prefix (`evaluation_loop`)
        if self.model.training:
            logs.update({key: total / count for key, (total, count) in self._metrics["train"].items()})
            self._metrics["train"].clear()
        super().log(logs, start_time)

    # Without labels, `Trainer.prediction_step` would only run a forward; the loss needs `compute_loss`
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        """Loss (mean over the batch's prompts) and, for `compute_metrics`, per-prompt scores and reference ranks.

        Returns `(loss, scores, ranks)`: `scores` [B, n_max] fp32 candidate scores (mean token log-prob) in reference
        rank order, best first; `ranks` [B, n_max] int64 reference rank of each candidate (0 = best, candidates tied
        in reward share the better rank). Padding candidates are -100 in both, the value `Trainer` pads with across
        batches and processes. See the class docstring.
        """
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, output = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        layout = self._layout(inputs)
        scores, mask = layout.to_padded(output.scores.float(), fill=-100.0)
        rewards = inputs.get("rewards")
        ranks = reference_ranks(mask, None if rewards is None else layout.to_padded(rewards)[0])
        return loss.detach(), scores, ranks

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` takes the last complete checkpoint."""
        # `True` resumes from the last *complete* checkpoint: transformers' `get_last_checkpoint` takes the highest
        # step even when the process died while writing it
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"No complete checkpoint in {self.args.output_dir} to resume from (a checkpoint is complete once "
                    f"its `{CHECKPOINT_COMPLETE}` is written)"
                )
            logger.info(f"Resuming from the last complete checkpoint, {resume_from_checkpoint}")
        if resume_from_checkpoint:
            self._load_ranking_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)

    def train_part(
        self,
        dataset,
        *,
        name: str,
        checkpoint_subdir: str | None = None,
        resume_from_checkpoint: str | None = None,
        step_offset: int = 0,
        **train_kwargs,
    ):
        """Train on one part of the data with the optimizer state kept from the parts before: `dataset` (rows of any
        accepted format) becomes the train set, checkpoints go to `output_dir/checkpoint_subdir/checkpoint-N`, and
        `resume_from_checkpoint` is a checkpoint of this part. The step counter goes on from `step_offset` (the steps
        of the parts before), and the learning-rate schedule of `create_schedule_for_parts`, when made, goes on too:
        warm-up happens once over every part. Self-bootstrapping trains each round with it."""
        self.train_dataset = self._prepare_dataset(dataset, self.processing_class, self.args, name)
        self._checkpoint_subdir, self._step_offset = checkpoint_subdir, step_offset
        self._expected_part_steps = self.steps_for_rows(len(self.train_dataset))
        try:
            return RankingTrainer.train(self, resume_from_checkpoint=resume_from_checkpoint, **train_kwargs)
        finally:
            self._checkpoint_subdir, self._step_offset, self._expected_part_steps = None, 0, None

    def steps_for_rows(self, num_rows: int) -> int:
        """Optimizer steps `Trainer.train()` takes on a train set of `num_rows` rows with these arguments (known before
        the rows are, so that a schedule over several parts can be made up front)."""
        args = self.args
        if args.max_steps > 0:
            return args.max_steps
        per_process = math.ceil(num_rows / args.world_size)  # the distributed sampler evens out the processes
        batch_size = self._train_batch_size
        batches = per_process // batch_size if args.dataloader_drop_last else math.ceil(per_process / batch_size)
        accumulation = args.gradient_accumulation_steps
        updates = max(batches // accumulation + int(batches % accumulation > 0), 1)
        return math.ceil(args.num_train_epochs * updates)

    def create_schedule_for_parts(self, total_steps: int) -> None:
        """One learning-rate schedule over `total_steps`, the steps of every part `train_part` will train, kept across
        its `Trainer.train()` calls (each of which would otherwise start a schedule of its own, warm-up included)."""
        self.create_optimizer()
        self.lr_scheduler = None
        self.create_scheduler(num_training_steps=total_steps)
        self._created_lr_scheduler = False  # not `Trainer`'s own: `train()` keeps it

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        epochs_trained, steps_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if self._expected_part_steps is not None and max_steps != self._expected_part_steps:
            raise RuntimeError(
                f"a part of {len(self.train_dataset)} rows trains {max_steps} steps, not the "
                f"{self._expected_part_steps} its schedule was made for"
            )
        offset = self._step_offset
        if offset:
            # `Trainer` counts from 0 in every `train()`; a part's steps go on from the parts before it. A resumed
            # part's checkpoint holds the global count: its place within the part is the count less the offset
            if resume_from_checkpoint is None:
                self.state.global_step = offset
            else:
                in_part = self.state.global_step - offset
                epochs_trained = int(in_part // num_update_steps_per_epoch)
                steps_trained = (
                    0
                    if self.args.ignore_data_skip
                    else (in_part % num_update_steps_per_epoch) * self.args.gradient_accumulation_steps
                )
            self.state.max_steps = offset + max_steps
        return epochs_trained, steps_trained

    def restore_checkpoint(self, checkpoint: str) -> None:
        """Weights, optimizer state, RNG state and the ranking state as `checkpoint` holds them, without training: the
        state a part left, before the next part trains (`train_part` keeps this optimizer)."""
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        self._load_from_checkpoint(checkpoint)
        self.create_optimizer()
        state = torch.load(Path(checkpoint) / OPTIMIZER_NAME, map_location=self.args.device, weights_only=True)
        self.optimizer.load_state_dict(state)
        scheduler = Path(checkpoint) / SCHEDULER_NAME
        if self.lr_scheduler is not None and scheduler.is_file():
            self.lr_scheduler.load_state_dict(torch.load(scheduler, weights_only=True))
        self._load_rng_state(checkpoint)
        self._load_ranking_state(checkpoint)

    def _get_output_dir(self, trial) -> str:
        output_dir = super()._get_output_dir(trial)
        return os.path.join(output_dir, self._checkpoint_subdir) if self._checkpoint_subdir else output_dir

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, tagged with the loss core's path that ran (`loss-core-triton`, `-torch` or `-trl`)."""
        tags = {tags} if isinstance(tags, str) else set(tags or ())
        if self.loss_implementation_used is not None:
            tags.add(f"loss-core-{self.loss_implementation_used}")
        return super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)

    def _save_checkpoint(self, model, trial):
        # Save the model card along with each checkpoint
        if self.args.hub_model_id is None:
            model_name = Path(self.args.output_dir).name
        else:
            model_name = self.args.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=model_name)

        # transformers writes a checkpoint in place, file after file, and gives no sign that it is complete: a run
        # killed while saving leaves a partial `checkpoint-N` that `get_last_checkpoint` would pick and fail to load
        # (or load half of). So: drop the marker of a previous save into the same folder, write everything, wait for
        # every process's files (RNG states are per process), then write the marker `CHECKPOINT_COMPLETE` last, with
        # `os.replace`. Old checkpoints are rotated out only after that, so a kill never leaves fewer complete
        # checkpoints than `save_total_limit`. (Protects against a killed process, not an OS crash: no fsync.)
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            (folder / CHECKPOINT_COMPLETE).unlink(missing_ok=True)
        save_total_limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = save_total_limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            atomic_write_json(folder / RANKING_STATE_NAME, self._ranking_state())
            atomic_write_json(folder / CHECKPOINT_COMPLETE, {"global_step": self.state.global_step})
            rotate_checkpoints(
                output_dir=str(folder.parent),
                save_total_limit=save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def _ranking_state(self) -> dict:
        # Not in transformers' TrainerState: the token count behind the `num_tokens` metric and the metric sums since
        # the last log. Without them a resumed run logs other values than an uninterrupted one
        return {
            "total_train_tokens": self._total_train_tokens,
            "train_metrics": {name: list(value) for name, value in self._metrics["train"].items()},
        }

    def _load_ranking_state(self, checkpoint: str) -> None:
        path = Path(checkpoint) / RANKING_STATE_NAME
        if not path.is_file():  # a checkpoint written by another trainer
            return
        state = json.loads(path.read_text())
        self._total_train_tokens = state["total_train_tokens"]
        self._metrics["train"].clear()
        self._metrics["train"].update({name: list(value) for name, value in state["train_metrics"].items()})
