"""PyTorch MMIB: multimodal entity and relation extraction with a variational information bottleneck."""

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MODEL_MAPPING, AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_mmib import MMIBConfig
from .crf_mmib import MMIBCRF
from .vision_towers_mmib import attention_fallback, pool_tower_output, timm_initialised_tower, vision_sub_config

# Bounds of the latent log-variances (see `MMIBVariationalEncoder.forward`).
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclass
class MMIBModelOutput(ModelOutput):
    r"""
    Output of [`MMIBModel`]. B = batch, L = text tokens, N = 1 + num_crops image slots, d = latent size.
    The regularizer fields (`kl_text`, `kl_vision`, `alignment_loss`) and the log-variances are `None` when
    `compute_regularizers=False` skipped them: the heads do so in eval mode without `labels`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(B, L, d)`):
            Image-aware text states C = APEnc_T2V(Z^T, APEnc_V2T(Z^V, Z^T)) (paper eq. 16-17).
        text_latent_mean (`torch.FloatTensor` of shape `(B, L, d)`):
            Mean of q(Z^T | X^T).
        text_latent_logvar (`torch.FloatTensor` of shape `(B, L, d)`):
            Log-variance of q(Z^T | X^T); `None` without the refinement regularizer or when `compute_regularizers`
            skipped it (eval mode).
        vision_latent_mean (`torch.FloatTensor` of shape `(B, N, d)`):
            Mean of q(Z^V | X^V); `None` for a `text_only` model.
        vision_latent_logvar (`torch.FloatTensor` of shape `(B, N, d)`):
            Log-variance of q(Z^V | X^V); `None` for a `text_only` model, without the refinement regularizer or
            when `compute_regularizers` skipped it (eval mode).
        kl_text (`torch.FloatTensor` of shape `()`):
            KL(q(Z^T | X^T) || N(0, I)) over valid tokens, reduced as `config.kl_reduction` says, in fp32; `None`
            when `config.use_refinement_regularizer` is False.
        kl_vision (`torch.FloatTensor` of shape `()`):
            KL(q(Z^V | X^V) || N(0, I)) over present image slots, in fp32; 0 when the batch has no image; `None`
            without the refinement regularizer or for a `text_only` model.
        alignment_loss (`torch.FloatTensor` of shape `()`):
            Discriminator binary cross-entropy of the alignment regularizer, in fp32; 0 when no post has an image;
            `None` when `config.use_alignment_regularizer` is False or for a `text_only` model.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The text tower's hidden states (embedding output and one per layer, each `(B, L, h)` with h the text
            tower's hidden size), followed by MMIB's states along the text, each `(B, L, d)`: the text latents Z^T
            and, unless `config.text_only`, the fused states C.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The APEnc attention maps, in the order they are computed: text mean and log-variance encoders
            `(B, H, L, L)`, vision mean and log-variance encoders `(B, H, N, N)`, vision-to-text `(B, H, N, L)` and
            text-to-vision `(B, H, L, N)`, with H = `config.apenc_num_attention_heads`. Layers that an ablation
            does not build, or that `compute_regularizers=False` skips, are left out. The text tower's own attention
            maps are not included.
    """

    last_hidden_state: torch.FloatTensor | None = None
    text_latent_mean: torch.FloatTensor | None = None
    text_latent_logvar: torch.FloatTensor | None = None
    vision_latent_mean: torch.FloatTensor | None = None
    vision_latent_logvar: torch.FloatTensor | None = None
    kl_text: torch.FloatTensor | None = None
    kl_vision: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MMIBTokenClassifierOutput(ModelOutput):
    r"""
    Output of [`MMIBForTokenClassification`]. B = batch, W = words, K = labels.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            The training objective of paper eq. 29, [`mmib_total_loss`]: `task_loss` + beta_text * `kl_text` +
            beta_vision * `kl_vision` + alignment_weight * `alignment_loss` (absent terms left out).
        logits (`torch.FloatTensor` of shape `(B, W, K)`):
            CRF emission scores at the first sub-word of each word.
        predictions (`torch.LongTensor` of shape `(B, W)`, *optional*, returned in eval mode):
            Viterbi label ids per word, -100 at padded word positions (all -100 for a post that kept no word).
        task_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            CRF negative log-likelihood, mean over the posts that kept at least one word (0 if none did).
        kl_text, kl_vision, alignment_loss (`torch.FloatTensor` of shape `()`, *optional*):
            As in [`MMIBModelOutput`].
        hidden_states, attentions (`tuple(torch.FloatTensor)`, *optional*):
            As in [`MMIBModelOutput`], returned with `output_hidden_states=True` / `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    predictions: torch.LongTensor | None = None
    task_loss: torch.FloatTensor | None = None
    kl_text: torch.FloatTensor | None = None
    kl_vision: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MMIBRelationClassifierOutput(ModelOutput):
    r"""
    Output of [`MMIBForRelationClassification`]. B = batch, R = relation labels.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            The training objective of paper eq. 29, [`mmib_total_loss`], as in [`MMIBTokenClassifierOutput`].
        logits (`torch.FloatTensor` of shape `(B, R)`):
            Relation scores (before softmax).
        task_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Cross-entropy, mean over posts.
        kl_text, kl_vision, alignment_loss (`torch.FloatTensor` of shape `()`, *optional*):
            As in [`MMIBModelOutput`].
        hidden_states, attentions (`tuple(torch.FloatTensor)`, *optional*):
            As in [`MMIBModelOutput`], returned with `output_hidden_states=True` / `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    task_loss: torch.FloatTensor | None = None
    kl_text: torch.FloatTensor | None = None
    kl_vision: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention written out, as in models/bert: `(B, H, Lq, Dh)` queries -> `(B, Lq, H, Dh)` and weights."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class MMIBAttention(nn.Module):
    """
    Multi-head attention of a query sequence over a key/value sequence with a key padding mask (paper eq. 4).

    The kernel is chosen by `config._attn_implementation` through transformers' attention interface (`"eager"` or
    `"sdpa"`); `output_attentions=True` always runs the eager kernel, the only one that returns the weights.
    """

    def __init__(self, config: MMIBConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.apenc_num_attention_heads
        self.head_dim = config.latent_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.apenc_dropout
        self.is_causal = False
        self.q_proj = nn.Linear(config.latent_size, config.latent_size)
        self.k_proj = nn.Linear(config.latent_size, config.latent_size)
        self.v_proj = nn.Linear(config.latent_size, config.latent_size)
        self.out_proj = nn.Linear(config.latent_size, config.latent_size)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch_size, length, _ = states.shape
        return states.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        key_mask: torch.Tensor,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            queries (`torch.Tensor` of shape `(B, Lq, d)`): query states.
            keys (`torch.Tensor` of shape `(B, Lk, d)`): key and value states.
            key_mask (`torch.BoolTensor` of shape `(B, Lk)`): True where a key exists.
            output_attentions (`bool`, *optional*, defaults to `False`): also return the attention weights.
            kwargs: passed to the attention function.

        Returns:
            `(output, weights)`: `output` of shape `(B, Lq, d)`, all zeros for a post whose keys are all masked
            (e.g. a post without any image), so that its queries pass through the residual unchanged; `weights` of
            shape `(B, H, Lq, Lk)` (zeros for such a post) when `output_attentions`, else `None`.
        """
        has_key = key_mask.any(dim=1)
        # A row with no valid key would softmax over nothing (NaN); let it attend anywhere and zero it below.
        attend = key_mask | ~has_key[:, None]
        additive_mask = torch.zeros(attend.shape, dtype=queries.dtype, device=queries.device)
        additive_mask = additive_mask.masked_fill(~attend, torch.finfo(queries.dtype).min)[:, None, None, :]
        attention_interface = eager_attention_forward
        if not output_attentions:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attended, weights = attention_interface(
            self,
            self._split_heads(self.q_proj(queries)),
            self._split_heads(self.k_proj(keys)),
            self._split_heads(self.v_proj(keys)),
            additive_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        keep = has_key.to(queries.dtype)
        output = self.out_proj(attended.reshape(queries.shape)) * keep[:, None, None]
        if weights is not None:
            weights = weights * keep[:, None, None, None]
        return output, weights


class MMIBFeedForward(nn.Module):
    """Position-wise feed-forward network: Linear, GELU, Linear."""

    def __init__(self, config: MMIBConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.latent_size, config.apenc_intermediate_size)
        self.fc2 = nn.Linear(config.apenc_intermediate_size, config.latent_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(hidden_states)))


class MMIBAttentivePropagationEncoder(GradientCheckpointingLayer):
    """APEnc(Q, K): attention, residual + LayerNorm, feed-forward, residual + LayerNorm (paper eq. 4-5)."""

    def __init__(self, config: MMIBConfig):
        super().__init__()
        self.attention = MMIBAttention(config)
        self.attention_layer_norm = nn.LayerNorm(config.latent_size, eps=config.layer_norm_eps)
        self.feed_forward = MMIBFeedForward(config)
        self.output_layer_norm = nn.LayerNorm(config.latent_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.apenc_dropout)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            queries (`torch.Tensor` of shape `(B, Lq, d)`), keys (`torch.Tensor` of shape `(B, Lk, d)`),
            key_mask (`torch.BoolTensor` of shape `(B, Lk)`), kwargs (`output_attentions`, ...): as in
            [`MMIBAttention`]. The tensors are positional so that gradient checkpointing sees them.

        Returns:
            `(hidden_states, attention_weights)`: `(B, Lq, d)` and, with `output_attentions=True`, `(B, H, Lq, Lk)`.
        """
        attended, weights = self.attention(queries, keys, key_mask, **kwargs)
        hidden = self.attention_layer_norm(queries + self.dropout(attended))
        return self.output_layer_norm(hidden + self.dropout(self.feed_forward(hidden))), weights


class MMIBLogVarLayerNorm(nn.LayerNorm):
    """The output LayerNorm of a log-variance APEnc: it starts at `config.latent_logvar_init` (see `_init_weights`)."""


class MMIBVariationalEncoder(nn.Module):
    """Gaussian latent of one modality: separate APEnc layers for the mean and the log-variance (paper eq. 6-9)."""

    def __init__(self, config: MMIBConfig):
        super().__init__()
        self.mean_encoder = MMIBAttentivePropagationEncoder(config)
        # Without the refinement regularizer the latent is deterministic: there is no variance to learn.
        self.logvar_encoder = None
        if config.use_refinement_regularizer:
            self.logvar_encoder = MMIBAttentivePropagationEncoder(config)
            self.logvar_encoder.output_layer_norm = MMIBLogVarLayerNorm(config.latent_size, eps=config.layer_norm_eps)

    def forward(
        self, states: torch.Tensor, mask: torch.Tensor, with_logvar: bool = True, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
        """
        Args:
            states (`torch.Tensor` of shape `(B, L, d)`): the modality's projected features X.
            mask (`torch.BoolTensor` of shape `(B, L)`): True at valid positions.
            with_logvar (`bool`, *optional*, defaults to `True`): run the log-variance encoder. In eval mode the
                latent is the mean, so the log-variance only serves the KL term; `False` skips it there (in
                training mode the sample needs it and it always runs).
            kwargs (`output_attentions`, ...): as in [`MMIBAttention`].

        Returns:
            `(latents, mean, logvar, attentions)`: the first three of shape `(B, L, d)`. `latents` is a
            reparameterised sample mean + exp(logvar / 2) * eps in training mode and the mean in eval mode. Without
            a log-variance encoder (`config.use_refinement_regularizer=False`), `logvar` is `None` and `latents` is
            the mean. `logvar` is clamped to [`LOGVAR_MIN`, `LOGVAR_MAX`] = [-30, 20]. `attentions` holds the
            `(B, H, L, L)` maps of the mean and log-variance encoders with `output_attentions=True`, else it is
            empty.
        """
        mean, mean_weights = self.mean_encoder(states, states, mask, **kwargs)
        if self.logvar_encoder is None or not (with_logvar or self.training):
            return mean, mean, None, _present(mean_weights)
        logvar, logvar_weights = self.logvar_encoder(states, states, mask, **kwargs)
        # Bounded so that exp(logvar) in the KL and exp(logvar / 2) in the sample cannot overflow, even in fp16
        # (exp(10) ~ 2.2e4 < 65504); a healthy model stays far inside (|logvar| < 5). As diffusers' Gaussian does.
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        attentions = _present(mean_weights, logvar_weights)
        if not self.training:
            return mean, mean, logvar, attentions
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean), mean, logvar, attentions


def _check_shape(name: str, tensor: torch.Tensor | None, expected: tuple, meaning: str) -> None:
    """Raises a ValueError naming `name` unless `tensor` has `expected` shape (`None` entries match any size)."""
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {meaning}, got {type(tensor).__name__}.")
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(want is not None and got != want for got, want in zip(shape, expected)):
        raise ValueError(f"{name} has shape {shape}, expected {meaning} = {tuple(e or '*' for e in expected)}.")


def _check_integer(name: str, tensor: torch.Tensor | None) -> None:
    if tensor is not None and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
        raise ValueError(f"{name} must hold integer ids (torch.long), got dtype {tensor.dtype}.")


def _check_range(name: str, tensor: torch.Tensor | None, low: int, high: int, allowed: int | None = None) -> None:
    """Raises unless every value of `tensor` is in [low, high) or equals `allowed`."""
    if tensor is None or tensor.numel() == 0:
        return
    outside = (tensor < low) | (tensor >= high)
    if allowed is not None:
        outside &= tensor != allowed
    if outside.any():
        extra = f" or {allowed}" if allowed is not None else ""
        raise ValueError(
            f"{name} holds {tensor[outside][0].item()}, outside the valid range [{low}, {high - 1}]{extra} "
            f"(first of {int(outside.sum())} such values)."
        )


def check_inputs(
    config: MMIBConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_features: torch.Tensor | None = None,
    image_mask: torch.Tensor | None = None,
    vocab_size: int | None = None,
    image_feature_mask: torch.Tensor | None = None,
) -> None:
    """
    Validates the inputs of [`MMIBModel.forward`] (which the heads run through), so that what a user can get wrong
    ends in a `ValueError` naming the argument and what was expected, not in an index error deep inside the towers or
    in silently wrong numbers. The heads' own inputs are checked by [`check_task_inputs`].

    Shapes and dtypes are always checked (they are static under `torch.compile`). Value checks (ids in range, finite
    image features) read the data, so they are skipped while `torch.compile` traces the model. Their cost is
    measured by `benchmarks/bench_input_checks.py` (< 2% of a forward pass).

    Args:
        config ([`MMIBConfig`]): gives the feature width and whether there is a vision pathway.
        vocab_size (`int`, *optional*): rows of the text tower's embeddings; `input_ids` are checked against it.
        Other arguments: as in [`MMIBModel.forward`].

    Raises:
        ValueError: an input of the wrong type, shape, dtype or range.
    """
    _check_shape("input_ids", input_ids, (None, None), "(batch_size, sequence_length)")
    _check_integer("input_ids", input_ids)
    batch_size, length = input_ids.shape
    text_shape = "(batch_size, sequence_length) like input_ids"
    _check_shape("attention_mask", attention_mask, (batch_size, length), text_shape)
    _check_shape("token_type_ids", token_type_ids, (batch_size, length), text_shape)
    _check_integer("token_type_ids", token_type_ids)
    if not config.text_only:
        channels = getattr(config.vision_config, "num_channels", 3)
        _check_shape(
            "pixel_values",
            pixel_values,
            (batch_size, None, channels, None, None),
            f"(batch_size, 1 + num_crops, {channels}, height, width)",
        )
        if pixel_values is not None and not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be floating point (from the image processor), got {pixel_values.dtype}."
            )
        feature_size = config.vision_feature_size
        _check_shape(
            "image_features",
            image_features,
            (batch_size, None, feature_size),
            f"(batch_size, 1 + num_crops, config.vision_feature_size = {feature_size})",
        )
        if image_features is not None and not image_features.is_floating_point():
            raise ValueError(f"image_features must be floating point, got {image_features.dtype}.")
        slots = pixel_values if pixel_values is not None else image_features
        num_slots = None if slots is None else slots.shape[1]
        like_images = "(batch_size, 1 + num_crops) like the images"
        _check_shape("image_mask", image_mask, (batch_size, num_slots), like_images)
        _check_shape("image_feature_mask", image_feature_mask, (batch_size, num_slots), like_images)
        if pixel_values is not None and image_features is not None and image_features.shape[1] != num_slots:
            raise ValueError(
                f"image_features has {image_features.shape[1]} image slots but pixel_values has {num_slots}."
            )
    if torch.compiler.is_compiling():
        return
    if vocab_size is not None:
        _check_range("input_ids", input_ids, 0, vocab_size)
    if not config.text_only and image_features is not None:
        # Slots outside image_feature_mask are computed from pixels: whatever they hold is not used.
        given = image_features if image_feature_mask is None else image_features[image_feature_mask.bool()]
        if not torch.isfinite(given).all():
            raise ValueError("image_features contains NaN or infinite values.")


def check_task_inputs(
    config: MMIBConfig,
    task: str,
    input_ids: torch.Tensor,
    word_index: torch.Tensor | None = None,
    entity_positions: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> None:
    """
    Validates the inputs that only a head takes (`word_index` or `entity_positions`, and `labels`), after
    [`check_inputs`] has passed `input_ids`, as a `ValueError` naming the argument and what was expected. Value checks
    (positions and labels in range) are skipped while `torch.compile` traces the model, as in [`check_inputs`].

    Args:
        config ([`MMIBConfig`]): gives the number of labels.
        task (`str`): `"ner"` or `"re"`: how `labels` are shaped.
        Other arguments: as in the heads' `forward`.

    Raises:
        ValueError: an input of the wrong type, shape, dtype or range.
    """
    batch_size, length = input_ids.shape
    if word_index is not None:
        _check_shape("word_index", word_index, (batch_size, None), "(batch_size, num_words)")
        _check_integer("word_index", word_index)
    if entity_positions is not None:
        _check_shape("entity_positions", entity_positions, (batch_size, 2, 2), "(batch_size, 2, 2)")
        _check_integer("entity_positions", entity_positions)
    if labels is not None:
        if task == "ner":
            words = None if word_index is None else word_index.shape[1]
            _check_shape("labels", labels, (batch_size, words), "(batch_size, num_words) like word_index")
        else:
            _check_shape("labels", labels, (batch_size,), "(batch_size,)")
        _check_integer("labels", labels)
    if torch.compiler.is_compiling():
        return
    _check_range("word_index", word_index, 0, length, allowed=-1)
    _check_range("entity_positions", entity_positions, 0, length)
    _check_range("labels", labels, 0, config.num_labels, allowed=-100 if task == "ner" else None)


def _present(*tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    return tuple(tensor for tensor in tensors if tensor is not None)


class MMIBDiscriminator(nn.Module):
    """D(Z^T, Z^V) = MLP(pool(Z^T) ⊕ pool(Z^V)) as a logit; the sigmoid is applied in the loss (paper eq. 26)."""

    def __init__(self, config: MMIBConfig):
        super().__init__()
        self.fc1 = nn.Linear(2 * config.latent_size, config.latent_size)
        self.fc2 = nn.Linear(config.latent_size, 1)

    def forward(self, text_pooled: torch.Tensor, vision_pooled: torch.Tensor) -> torch.Tensor:
        """Maps `(P, d)` and `(P, d)` to `(P,)` logits."""
        return self.fc2(F.gelu(self.fc1(torch.cat([text_pooled, vision_pooled], dim=-1)))).squeeze(-1)


def _text_tower_kwargs(text_config: PreTrainedConfig) -> dict:
    """Drop the text tower's pooler where its class allows it: MMIB never uses it, and unused weights break DDP."""
    parameters = inspect.signature(MODEL_MAPPING[type(text_config)].__init__).parameters
    return {"add_pooling_layer": False} if "add_pooling_layer" in parameters else {}


class MMIBPreTrainedModel(PreTrainedModel):
    """Weight initialisation, the Auto-class config binding and the two-tower constructor shared by MMIB models."""

    config_class = MMIBConfig
    base_model_prefix = "mmib"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # The towers' own entries (e.g. BertLayer, ResNetConvLayer) are added by `post_init` from the sub-models.
    _no_split_modules = ["MMIBAttentivePropagationEncoder", "MMIBDiscriminator", "MMIBCRF"]
    # forward takes **kwargs (for the attention functions), not the Trainer's loss kwargs: the loss is a mean per
    # batch, which Trainer must still divide by the gradient accumulation steps.
    accepts_loss_kwargs = False

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, with every MMIB Auto class in `auto_map` so that any head checkpoint
        also loads as `AutoModel` (and the other heads' classes) with `trust_remote_code=True`."""
        auto_map = {"AutoConfig": f"configuration_mmib.{MMIBConfig.__name__}"}
        auto_map.update({auto_class: f"modeling_mmib.{cls.__name__}" for cls, auto_class in AUTO_CLASSES.items()})
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **auto_map}
        super().save_pretrained(save_directory, *args, **kwargs)

    def _encode(
        self,
        task: str,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.LongTensor | None,
        pixel_values: torch.FloatTensor | None,
        image_features: torch.FloatTensor | None,
        image_mask: torch.Tensor | None,
        labels: torch.LongTensor | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        image_feature_mask: torch.Tensor | None,
        kwargs: dict,
        **task_input: torch.LongTensor | None,
    ) -> MMIBModelOutput:
        """The heads' shared prologue: the task input (`word_index` or `entity_positions`) is required, the encoder
        runs (checking its inputs; its regularizers only when there are labels to train on), then the head's own
        inputs are checked: each input is checked once per forward."""
        ((name, value),) = task_input.items()
        if value is None:
            raise ValueError(
                f"{name} is required (from MMIBProcessor). The call order is input_ids, attention_mask, "
                f"token_type_ids, {name}, ...: pass {name} by keyword."
            )
        outputs = self.mmib(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            image_features=image_features,
            image_mask=image_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            compute_regularizers=labels is not None,
            image_feature_mask=image_feature_mask,
            **kwargs,
        )
        check_task_inputs(self.config, task, input_ids, labels=labels, **task_input)
        return outputs

    @property
    def _text_model(self) -> PreTrainedModel:
        return getattr(self, self.base_model_prefix, self).text_model

    def get_input_embeddings(self) -> nn.Module:
        return self._text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self._text_model.set_input_embeddings(value)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MMIBCRF):
            init.uniform_(module.start_transitions, -0.1, 0.1)
            init.uniform_(module.end_transitions, -0.1, 0.1)
            init.uniform_(module.transitions, -0.1, 0.1)
        if isinstance(module, MMIBLogVarLayerNorm) and self.config.latent_logvar_init is not None:
            # A near-deterministic start: a default LayerNorm starts the latent with noise as large as its signal.
            init.zeros_(module.weight)
            init.constant_(module.bias, self.config.latent_logvar_init)

    @classmethod
    def from_text_vision_pretrained(
        cls,
        text_model_name_or_path: str,
        vision_model_name_or_path: str | PreTrainedConfig,
        **config_kwargs,
    ) -> "MMIBPreTrainedModel":
        """
        Build a fresh MMIB model around two pretrained towers, keeping their weights.

        The counterpart of transformers' `VisionTextDualEncoderModel.from_vision_text_pretrained`, with two
        differences: the text tower comes first (MMIB is a text model that reads images, and the vision argument may
        be a config instead of a checkpoint), and every keyword argument is an [`MMIBConfig`] field (e.g.
        `attn_implementation`, `num_crops`); there are no `text_` / `vision_` prefixed tower arguments, because
        `text_config` and `text_only` are config fields. The towers load with their checkpoints' own settings.

        Args:
            text_model_name_or_path (`str`): Hub id or folder of a BERT-like encoder (e.g. `bert-base-cased`).
            vision_model_name_or_path (`str` or `PreTrainedConfig`): Hub id or folder of an image backbone of any
                family in [`MMIBConfig`] (e.g. `microsoft/resnet-50`, `google/vit-base-patch16-224`, a timm model
                such as `timm/resnet18.a1_in1k`, or the folder of `scripts/convert_efficientnet_lite0.py`); of a
                CLIP or SigLIP checkpoint only the vision half is loaded. Or a config, which gives a randomly
                initialised tower (tests and offline smoke runs).
            config_kwargs: other [`MMIBConfig`] fields (`num_crops`, `id2label`, ...).

        Returns:
            The model, in train mode, with the MMIB layers and the head freshly initialised.
        """
        text_config = AutoConfig.from_pretrained(text_model_name_or_path)
        text_model = AutoModel.from_pretrained(text_model_name_or_path, **_text_tower_kwargs(text_config))
        vision_model = None
        if isinstance(vision_model_name_or_path, PreTrainedConfig):
            vision_config = vision_sub_config(vision_model_name_or_path)
            if vision_config.model_type == "timm_wrapper":
                vision_model = timm_initialised_tower(vision_config)
        else:
            vision_config = vision_sub_config(AutoConfig.from_pretrained(vision_model_name_or_path))
            vision_model = AutoModel.from_pretrained(vision_model_name_or_path, config=vision_config)
        config = MMIBConfig(text_config=text_model.config, vision_config=vision_config, **config_kwargs)
        model = cls(config)
        # Loaded after construction: post_init() would re-initialise towers passed into __init__.
        base = getattr(model, cls.base_model_prefix, model)
        base.text_model.load_state_dict(text_model.state_dict())
        if vision_model is not None and base.vision_model is not None:
            base.vision_model.load_state_dict(vision_model.state_dict())
        model.train()
        return model


class MMIBModel(MMIBPreTrainedModel):
    """
    The MMIB encoder: text and vision towers, the variational encoders of both modalities with the refinement
    (KL) and alignment (discriminator) regularizers, and the two cross-modal fusion APEnc layers.
    """

    def __init__(self, config: MMIBConfig):
        super().__init__(config)
        attention_fallback(config.text_config)
        self.text_model = AutoModel.from_config(config.text_config, **_text_tower_kwargs(config.text_config))
        text_size = config.text_config.hidden_size
        self.text_projection = (
            nn.Identity() if text_size == config.latent_size else nn.Linear(text_size, config.latent_size)
        )
        self.text_variational_encoder = MMIBVariationalEncoder(config)
        # Ablations build only what they run: a module that never runs would be dead weight in the checkpoint and
        # an unused parameter under DDP.
        self.vision_model = self.vision_projection = self.vision_variational_encoder = None
        self.vision_to_text_encoder = self.text_to_vision_encoder = self.discriminator = None
        if not config.text_only:
            attention_fallback(config.vision_config)
            self.vision_model = AutoModel.from_config(config.vision_config)
            self.vision_projection = nn.Linear(config.vision_feature_size, config.latent_size)
            self.vision_variational_encoder = MMIBVariationalEncoder(config)
            if config.use_alignment_regularizer:
                self.discriminator = MMIBDiscriminator(config)
            self.vision_to_text_encoder = MMIBAttentivePropagationEncoder(config)
            self.text_to_vision_encoder = MMIBAttentivePropagationEncoder(config)
            if config.freeze_vision_encoder:
                self.vision_model.requires_grad_(False)
        self.post_init()

    def train(self, mode: bool = True) -> "MMIBModel":
        super().train(mode)
        if self.config.freeze_vision_encoder and self.vision_model is not None:
            self.vision_model.eval()
        return self

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """
        One pooled vision-tower vector per image, the inputs that `image_features` caches. The pooling is
        `config.vision_feature_pooling`: the tower's `pooler_output` (ResNet, ConvNeXt, CLIP and SigLIP vision,
        timm), its CLS token (ViT, DeiT), or the mean of its patches.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(..., 3, H, W)`): images or crops.

        Returns:
            `torch.FloatTensor` of shape `(..., config.vision_feature_size)`.
        """
        leading_shape = pixel_values.shape[:-3]
        # Channels-last inputs make CPU (oneDNN) and GPU convolutions faster: 1.2-1.6x for ResNet-50 on 2 CPU cores.
        flat = pixel_values.reshape(-1, *pixel_values.shape[-3:]).contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision_encoder):
            outputs = self.vision_model(pixel_values=flat)
        pooled = pool_tower_output(outputs, self.config.vision_feature_pooling, type(self.vision_model).__name__)
        return pooled.reshape(*leading_shape, -1)

    @property
    def vision_dtype(self) -> torch.dtype:
        """The dtype of the vision tower's weights, in which its features enter the fusion layers."""
        return self.vision_model.dtype

    def _image_inputs(
        self,
        pixel_values: torch.FloatTensor | None,
        image_features: torch.FloatTensor | None,
        image_mask: torch.Tensor | None,
        batch_size: int,
        image_feature_mask: torch.Tensor | None = None,
    ) -> tuple[torch.FloatTensor, torch.BoolTensor]:
        if pixel_values is not None and image_features is not None and image_feature_mask is None:
            raise ValueError(
                "Both pixel_values and image_features were given: pass image_feature_mask to say which slots "
                "image_features holds."
            )
        if image_feature_mask is not None and image_features is None:
            raise ValueError(
                "image_feature_mask says which slots image_features holds, but no image_features was given."
            )
        if pixel_values is None and image_features is None:
            if image_mask is not None and image_mask.any():
                raise ValueError(
                    "image_mask marks images as present, but neither pixel_values nor image_features was given."
                )
            features = torch.zeros(batch_size, 1, self.config.vision_feature_size, device=self.device)
            return features, torch.zeros(batch_size, 1, dtype=torch.bool, device=self.device)
        slots = (pixel_values if pixel_values is not None else image_features).shape[:2]
        if slots[0] != batch_size:
            raise ValueError(f"The image inputs hold {slots[0]} posts but input_ids holds {batch_size}.")
        image_mask = (
            torch.ones(slots, dtype=torch.bool, device=self.device) if image_mask is None else image_mask.bool()
        )
        if image_mask.shape != slots:
            raise ValueError(f"image_mask has shape {tuple(image_mask.shape)}, expected {tuple(slots)}.")
        if image_features is not None and image_features.shape[-1] != self.config.vision_feature_size:
            raise ValueError(
                f"image_features has size {image_features.shape[-1]} in its last dimension, expected "
                f"config.vision_feature_size = {self.config.vision_feature_size}."
            )
        if image_feature_mask is None:
            if image_features is not None:
                return image_features, image_mask
            feature_mask = torch.zeros_like(image_mask)
        else:
            feature_mask = image_feature_mask.bool()
            if (feature_mask & ~image_mask).any():
                raise ValueError("image_feature_mask marks slots that image_mask marks as absent.")
        computed = image_mask & ~feature_mask
        if computed.any() and pixel_values is None:
            raise ValueError(
                f"{int(computed.sum())} present image slots are not in image_feature_mask and no pixel_values "
                "were given to compute them."
            )
        # The processor returns fp32 pixels; a half-precision tower needs its own dtype.
        dtype = self.vision_dtype
        features = torch.zeros(*slots, self.config.vision_feature_size, dtype=dtype, device=image_mask.device)
        if image_features is not None:
            features[feature_mask] = image_features[feature_mask].to(dtype)
        # Only present slots without features go through the tower: absent crops cost nothing.
        if computed.any():
            features[computed] = self.get_image_features(pixel_values[computed].to(dtype)).to(dtype)
        return features, image_mask

    def _kl_divergence(self, mean: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, exp(logvar)) || N(0, I)) over the valid positions, reduced by `config.kl_reduction`, in fp32."""
        mean, logvar = mean.float(), logvar.float()
        per_position = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)
        total = (per_position * mask.to(per_position.dtype)).sum()
        if self.config.kl_reduction == "sum":
            return total / mask.shape[0]
        return total / (mask.sum().clamp(min=1) * mean.shape[-1])

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.alignment_pooling == "first":
            # The first present position: the whole image, or the first crop of a post that has crops only.
            first = mask.to(torch.int8).argmax(dim=1)
            return states[torch.arange(states.shape[0], device=states.device), first]
        weights = mask.to(states.dtype)[:, :, None]
        return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def _alignment_loss(
        self,
        text_latents: torch.Tensor,
        text_mask: torch.Tensor,
        vision_latents: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> torch.Tensor:
        """-[mean log D(Z^T, Z^V+) + mean log(1 - D(Z^T, Z^V-))] over posts with an image (paper eq. 25)."""
        with_image = image_mask.any(dim=1)
        text_pooled = self._pool(text_latents, text_mask)[with_image]
        vision_pooled = self._pool(vision_latents, image_mask)[with_image]
        num_posts = text_pooled.shape[0]
        if num_posts == 0:
            return text_latents.new_zeros((), dtype=torch.float32)
        positives = self.discriminator(text_pooled, vision_pooled).float()
        loss = F.binary_cross_entropy_with_logits(positives, torch.ones_like(positives))
        num_negatives = min(self.config.num_negatives, num_posts - 1)
        if num_negatives > 0:
            negatives = torch.cat(
                [
                    self.discriminator(text_pooled, vision_pooled.roll(shift, 0)).float()
                    for shift in range(1, num_negatives + 1)
                ]
            )
            loss = loss + F.binary_cross_entropy_with_logits(negatives, torch.zeros_like(negatives))
        return loss

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        image_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        compute_regularizers: bool = True,
        image_feature_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MMIBModelOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(B, L)`): token ids from [`MMIBProcessor`].
            attention_mask (`torch.Tensor` of shape `(B, L)`, *optional*): 1 for real tokens, 0 for padding.
            token_type_ids (`torch.LongTensor` of shape `(B, L)`, *optional*): passed to the text tower.
            pixel_values (`torch.FloatTensor` of shape `(B, N, 3, H, W)`, *optional*): the whole image (slot 0)
                and N - 1 crops per post; cast to the vision tower's dtype.
            image_features (`torch.FloatTensor` of shape `(B, N, config.vision_feature_size)`, *optional*):
                precomputed [`~MMIBModel.get_image_features`] outputs, instead of `pixel_values`.
            image_mask (`torch.Tensor` of shape `(B, N)`, *optional*): True (1) where the slot holds an image.
                Defaults to all slots present. With neither images nor features, every post is text-only.
                A `config.text_only` model ignores the three image inputs.
            output_attentions (`bool`, *optional*): return the APEnc attention maps (see
                [`MMIBModelOutput`]). Defaults to `config.output_attentions`.
            output_hidden_states (`bool`, *optional*): return the hidden states. Defaults to
                `config.output_hidden_states`.
            return_dict (`bool`, *optional*): return a [`MMIBModelOutput`] (default: `config.return_dict`) or a
                plain tuple of its non-`None` fields.
            compute_regularizers (`bool`, *optional*, defaults to `True`): compute the KL terms, the alignment loss
                and (in eval mode) the log-variance encoders. They only feed the training objective, so the heads
                pass `False` in eval mode when no `labels` are given; the outputs `kl_text`, `kl_vision`,
                `alignment_loss` and the log-variances are then `None`. Training mode always computes them.
            image_feature_mask (`torch.Tensor` of shape `(B, N)`, *optional*): True (1) where `image_features`
                holds the slot's features (e.g. from a cache); the other present slots are computed from
                `pixel_values`, so one batch can mix cached features and pixels. Defaults to `image_mask` when only
                `image_features` is given; required when both `pixel_values` and `image_features` are.
            kwargs: passed to the text tower and to the APEnc attention functions, as in BERT.

        Returns:
            [`MMIBModelOutput`] or `tuple`.
        """
        check_inputs(
            self.config,
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values,
            image_features,
            image_mask,
            vocab_size=self.text_model.get_input_embeddings().num_embeddings,
            image_feature_mask=image_feature_mask,
        )
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        batch_size = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_mask = attention_mask.bool()
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        attention_kwargs = {"output_attentions": output_attentions, **kwargs}
        text_inputs = self.text_projection(text_outputs.last_hidden_state)
        compute_regularizers = compute_regularizers or self.training
        text_latents, text_mean, text_logvar, attentions = self.text_variational_encoder(
            text_inputs, text_mask, compute_regularizers, **attention_kwargs
        )
        use_kl = self.config.use_refinement_regularizer and compute_regularizers
        outputs = MMIBModelOutput(
            last_hidden_state=text_latents,
            text_latent_mean=text_mean,
            text_latent_logvar=text_logvar,
            kl_text=self._kl_divergence(text_mean, text_logvar, text_mask) if use_kl else None,
        )
        if not self.config.text_only:
            image_features, image_mask = self._image_inputs(
                pixel_values, image_features, image_mask, batch_size, image_feature_mask
            )
            vision_inputs = self.vision_projection(image_features.to(text_inputs.dtype))
            vision_latents, vision_mean, vision_logvar, vision_attentions = self.vision_variational_encoder(
                vision_inputs, image_mask, compute_regularizers, **attention_kwargs
            )
            text_attended_vision, vision_to_text = self.vision_to_text_encoder(
                vision_latents, text_latents, text_mask, **attention_kwargs
            )
            fused, text_to_vision = self.text_to_vision_encoder(
                text_latents, text_attended_vision, image_mask, **attention_kwargs
            )
            attentions += vision_attentions + _present(vision_to_text, text_to_vision)
            outputs.last_hidden_state = fused
            outputs.vision_latent_mean = vision_mean
            outputs.vision_latent_logvar = vision_logvar
            if use_kl:
                outputs.kl_vision = self._kl_divergence(vision_mean, vision_logvar, image_mask)
            if self.config.use_alignment_regularizer and compute_regularizers:
                outputs.alignment_loss = self._alignment_loss(text_latents, text_mask, vision_latents, image_mask)
        if output_hidden_states:
            mmib_states = (text_latents,) if self.config.text_only else (text_latents, outputs.last_hidden_state)
            outputs.hidden_states = text_outputs.hidden_states + mmib_states
        if output_attentions:
            outputs.attentions = attentions
        return outputs if return_dict else outputs.to_tuple()


def mmib_total_loss(
    config: MMIBConfig,
    task_loss: torch.Tensor,
    kl_text: torch.Tensor | None = None,
    kl_vision: torch.Tensor | None = None,
    alignment_loss: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    The MMIB training objective (paper eq. 29), the one definition that the heads' `loss`, `MMIBTrainer`, the
    benchmarks and the tests use.

    Args:
        config ([`MMIBConfig`]): gives the weights `beta_text`, `beta_vision` and `alignment_weight`.
        task_loss (`torch.Tensor` of shape `()`): CRF negative log-likelihood (MNER) or cross-entropy (MRE).
        kl_text, kl_vision, alignment_loss (`torch.Tensor` of shape `()`, *optional*): the regularizers;
            `None` for a term that the model does not compute (ablation switches, `text_only`).

    Returns:
        `torch.Tensor` of shape `()`: task_loss + beta_text * kl_text + beta_vision * kl_vision
        + alignment_weight * alignment_loss, leaving out the `None` terms.
    """
    loss = task_loss
    for weight, term in (
        (config.beta_text, kl_text),
        (config.beta_vision, kl_vision),
        (config.alignment_weight, alignment_loss),
    ):
        if term is not None:
            loss = loss + weight * term
    return loss


def _loss_fields(config: MMIBConfig, task_loss: torch.Tensor | None, outputs: MMIBModelOutput) -> dict:
    """The loss fields of a head output: eq. 29 as `loss` when there is a task loss, and each of its parts."""
    regularizers = {
        "kl_text": outputs.kl_text,
        "kl_vision": outputs.kl_vision,
        "alignment_loss": outputs.alignment_loss,
    }
    loss = None if task_loss is None else mmib_total_loss(config, task_loss, **regularizers)
    return {
        "loss": loss,
        "task_loss": task_loss,
        **regularizers,
        "hidden_states": outputs.hidden_states,
        "attentions": outputs.attentions,
    }


def _classifier_dropout(config: MMIBConfig) -> nn.Dropout:
    return nn.Dropout(config.apenc_dropout if config.classifier_dropout is None else config.classifier_dropout)


class MMIBForTokenClassification(MMIBPreTrainedModel):
    """MMIB for multimodal NER: emissions at the first sub-word of each word and a linear-chain CRF (eq. 18, 27)."""

    def __init__(self, config: MMIBConfig):
        super().__init__(config)
        self.mmib = MMIBModel(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.latent_size, config.num_labels)
        self.crf = MMIBCRF(config.num_labels)
        self.post_init()

    def decode(self, logits: torch.Tensor, word_index: torch.LongTensor) -> torch.LongTensor:
        """
        Viterbi label path per word.

        Args:
            logits (`torch.Tensor` of shape `(B, W, K)`): emissions from `forward`.
            word_index (`torch.LongTensor` of shape `(B, W)`): as given to `forward` (-1 at padding).

        Returns:
            `torch.LongTensor` of shape `(B, W)`, label ids, -100 at padded word positions.
        """
        return self.crf.decode(logits.float(), word_index >= 0)

    def head_logits(self, last_hidden_state: torch.Tensor, word_index: torch.LongTensor) -> torch.Tensor:
        """
        The CRF emissions of the fused states: the head's part of `forward` after the encoder (the exported ONNX
        graph ends here; the CRF runs outside it).

        Args:
            last_hidden_state (`torch.Tensor` of shape `(B, L, d)`): [`MMIBModel`]'s output.
            word_index (`torch.LongTensor` of shape `(B, W)`): as given to `forward`.

        Returns:
            `torch.Tensor` of shape `(B, W, K)`.
        """
        word_states = last_hidden_state.gather(
            1, word_index.clamp(min=0)[:, :, None].expand(-1, -1, last_hidden_state.shape[-1])
        )
        return self.classifier(self.dropout(word_states))

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        word_index: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        image_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        image_feature_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MMIBTokenClassifierOutput | tuple:
        r"""
        Args:
            word_index (`torch.LongTensor` of shape `(B, W)`): position of the first sub-word of each word, -1 for
                padded words (from [`MMIBProcessor`]).
            labels (`torch.LongTensor` of shape `(B, W)`, *optional*): word-level label ids, -100 at padding.
            word_index (`torch.LongTensor` of shape `(B, W)`) is required; it is a keyword-or-fourth argument so that
                the BERT call order `model(input_ids, attention_mask)` holds.
            Other arguments (`output_attentions`, `output_hidden_states`, `return_dict`, `image_feature_mask`,
                `**kwargs` included): as in [`MMIBModel.forward`].

        Returns:
            [`MMIBTokenClassifierOutput`] (or a tuple of its non-`None` fields with `return_dict=False`);
            `predictions` is filled in eval mode.
        """
        outputs = self._encode(
            "ner",
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values,
            image_features,
            image_mask,
            labels,
            output_attentions,
            output_hidden_states,
            image_feature_mask,
            kwargs,
            word_index=word_index,
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        word_mask = word_index >= 0
        logits = self.head_logits(outputs.last_hidden_state, word_index)
        task_loss = None
        if labels is not None:
            if (word_mask & (labels < 0)).any():
                raise ValueError("labels hold -100 at a word position: every word needs a label.")
            # Mean over the posts that kept a word: a post truncated to nothing neither counts nor dilutes the rest.
            posts_with_words = word_mask[:, 0].sum().clamp(min=1)
            task_loss = self.crf.negative_log_likelihood(logits.float(), labels, word_mask).sum() / posts_with_words
        predictions = None if self.training else self.decode(logits, word_index)
        output = MMIBTokenClassifierOutput(
            logits=logits, predictions=predictions, **_loss_fields(self.config, task_loss, outputs)
        )
        return output if return_dict else output.to_tuple()


class MMIBForRelationClassification(MMIBPreTrainedModel):
    """MMIB for multimodal relation extraction: two entity vectors from the fused states, concatenated, linear."""

    def __init__(self, config: MMIBConfig):
        super().__init__(config)
        self.mmib = MMIBModel(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(2 * config.latent_size, config.num_labels)
        self.post_init()

    def _entity_vectors(self, states: torch.Tensor, entity_positions: torch.LongTensor) -> torch.Tensor:
        """`(B, L, d)` states and `(B, 2, 2)` marker positions -> `(B, 2 * d)` head ⊕ tail vectors."""
        batch = torch.arange(states.shape[0], device=states.device)
        if self.config.entity_pooling == "start":
            return torch.cat([states[batch, entity_positions[:, 0, 0]], states[batch, entity_positions[:, 1, 0]]], -1)
        positions = torch.arange(states.shape[1], device=states.device)
        vectors = []
        for entity in range(2):
            start, end = entity_positions[:, entity, 0], entity_positions[:, entity, 1]
            # Nested, identical or crossing spans put the other entity's markers between this one's: not its words.
            other = entity_positions[:, 1 - entity]
            is_other_marker = (positions[None, :, None] == other[:, None, :]).any(-1)
            inside = ((positions > start[:, None]) & (positions < end[:, None]) & ~is_other_marker).to(states.dtype)
            vectors.append((states * inside[:, :, None]).sum(1) / inside.sum(1, keepdim=True).clamp(min=1.0))
        return torch.cat(vectors, dim=-1)

    def head_logits(self, last_hidden_state: torch.Tensor, entity_positions: torch.LongTensor) -> torch.Tensor:
        """
        The relation logits of the fused states: the head's part of `forward` after the encoder (the exported ONNX
        graph ends here).

        Args:
            last_hidden_state (`torch.Tensor` of shape `(B, L, d)`): [`MMIBModel`]'s output.
            entity_positions (`torch.LongTensor` of shape `(B, 2, 2)`): as given to `forward`.

        Returns:
            `torch.Tensor` of shape `(B, R)`.
        """
        return self.classifier(self.dropout(self._entity_vectors(last_hidden_state, entity_positions)))

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        entity_positions: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        image_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        image_feature_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MMIBRelationClassifierOutput | tuple:
        r"""
        Args:
            entity_positions (`torch.LongTensor` of shape `(B, 2, 2)`): token positions of the markers
                `[[<s>, </s>], [<o>, </o>]]` around the head and tail entities (from [`MMIBProcessor`]).
            labels (`torch.LongTensor` of shape `(B,)`, *optional*): relation ids.
            entity_positions is required; it is a keyword-or-fourth argument so that the BERT call order holds.
            Other arguments (`output_attentions`, `output_hidden_states`, `return_dict`, `image_feature_mask`,
                `**kwargs` included): as in [`MMIBModel.forward`].

        Returns:
            [`MMIBRelationClassifierOutput`] (or a tuple of its non-`None` fields with `return_dict=False`).
        """
        outputs = self._encode(
            "re",
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values,
            image_features,
            image_mask,
            labels,
            output_attentions,
            output_hidden_states,
            image_feature_mask,
            kwargs,
            entity_positions=entity_positions,
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        logits = self.head_logits(outputs.last_hidden_state, entity_positions)
        task_loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        output = MMIBRelationClassifierOutput(logits=logits, **_loss_fields(self.config, task_loss, outputs))
        return output if return_dict else output.to_tuple()


# The one table of MMIB's Auto classes: the checkpoints' `auto_map` and the in-process registration in
# `mmib/__init__.py` are both built from it.
AUTO_CLASSES = {
    MMIBModel: "AutoModel",
    MMIBForTokenClassification: "AutoModelForTokenClassification",
    MMIBForRelationClassification: "AutoModelForSequenceClassification",
}
for _model_class, _auto_class in AUTO_CLASSES.items():
    _model_class.register_for_auto_class(_auto_class)

__all__ = [
    "AUTO_CLASSES",
    "LOGVAR_MAX",
    "LOGVAR_MIN",
    "check_inputs",
    "check_task_inputs",
    "mmib_total_loss",
    "MMIBPreTrainedModel",
    "MMIBModel",
    "MMIBForTokenClassification",
    "MMIBForRelationClassification",
]
