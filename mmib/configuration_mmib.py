"""MMIB model configuration."""

from typing import Literal

from transformers import PreTrainedConfig
from transformers.models.auto import CONFIG_MAPPING, AutoConfig

from .vision_towers_mmib import default_pooling, feature_size


class MMIBConfig(PreTrainedConfig):
    r"""
    Configuration of an MMIB model (Cui et al., "Enhancing Multimodal Entity and Relation Extraction with Variational
    Information Bottleneck"): a text tower and a vision tower, variational attentive propagation encoders (APEnc) that
    turn both modalities into Gaussian latents, a discriminator that aligns them, two cross-modal APEnc layers that
    fuse them, and a task head ([`MMIBForTokenClassification`] for MNER, [`MMIBForRelationClassification`] for MRE).

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the text tower: any BERT-like encoder known to `AutoModel`. Defaults to `BertConfig()`
            (the shape of `bert-base-cased`).
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the vision tower: any `AutoModel` image backbone (ResNet, ConvNeXt, ViT,
            `CLIPVisionConfig`, `SiglipVisionConfig`, `TimmWrapperConfig` for any timm architecture, ...). Defaults
            to `ResNetConfig()` (the shape of `microsoft/resnet-50`).
        vision_feature_pooling (`str`, *optional*):
            How [`MMIBModel.get_image_features`] turns the tower's output into one vector per image. `"pooler"`: the
            tower's `pooler_output` (ResNet and ConvNeXt: global average pool, + LayerNorm for ConvNeXt; CLIP vision:
            the post-LayerNorm CLS token; SigLIP vision: its attention-pooling head; timm: the model's own head
            pooling, `forward_head(pre_logits=True)`). `"cls"`: the first token of `last_hidden_state`. `"mean"`:
            the mean of `last_hidden_state` over its tokens (all of them, e.g. the CLS token with the patches) or
            over the H x W positions of a CNN feature map.
            Defaults to `"cls"` for ViT and DeiT (their `pooler_output` is an extra dense + tanh layer that image
            classification checkpoints do not train) and `"pooler"` for every other tower.
        latent_size (`int`, *optional*):
            Size d of every latent variable and fused representation. Defaults to the text tower's hidden size; when
            it differs, the text states are projected to it.
        apenc_num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads of every APEnc layer. Must divide `latent_size`.
        apenc_intermediate_size (`int`, *optional*):
            Width of the APEnc feed-forward network (Linear, GELU, Linear). Defaults to `4 * latent_size`.
        apenc_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on attention probabilities and APEnc sub-layer outputs.
        classifier_dropout (`float`, *optional*):
            Dropout on the features fed to the task head, as in BERT. Defaults to `apenc_dropout`.
        num_crops (`int`, *optional*, defaults to 4):
            Object crops m per post; the model sees 1 + m image slots (slot 0 is the whole image).
        beta_text (`float`, *optional*, defaults to 0.1):
            Weight beta_1 of the text minimality term KL(q(Z^T|X^T) || N(0, I)) in the total loss (paper eq. 29).
        beta_vision (`float`, *optional*, defaults to 0.1):
            Weight beta_2 of the vision minimality term KL(q(Z^V|X^V) || N(0, I)).
        alignment_weight (`float`, *optional*, defaults to 1.0):
            Weight lambda_ar of the alignment regularizer (paper eq. 25-26).
        kl_reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: KL averaged over latent dimensions and over valid positions (tokens or image slots) of the
            batch. `"sum"`: KL summed over latent dimensions and valid positions of each post, averaged over posts
            (the paper's sum over items).
        alignment_pooling (`str`, *optional*, defaults to `"mean"`):
            How Z^T and Z^V are pooled for the discriminator: `"mean"` over valid tokens / image slots, or `"first"`
            (the first token and the whole-image slot, as in the authors' code; for a post with crops but no whole
            image, its first present crop).
        num_negatives (`int`, *optional*, defaults to 1):
            In-batch negatives per post for the alignment regularizer: among the posts that have an image, post i
            is paired with the images of posts i-1, ..., i-k (the batch rolled by 1..k). Capped at that number
            minus one, so a batch with a single image has no negative term.
        latent_logvar_init (`float`, *optional*, defaults to -6.0):
            Log-variance with which every latent starts: the output LayerNorm of each log-variance APEnc starts with
            weight 0 and this bias, so a fresh model samples Z = mean + exp(-3) * eps and the variance grows only as
            far as the objective asks (as Alemi et al.'s deep VIB starts its sigma at softplus(-5)). `None`: that
            LayerNorm starts as every other (weight 1, bias 0); on a BERT-like tower's states the log-variance then
            starts as large as the signal (median noise variance 1) and near 15 in outlier dimensions, which costs a
            text-only MNRE run 1-3 F1 points in its first epoch (docs/paper.md). Loaded checkpoints keep their weights.
        use_refinement_regularizer (`bool`, *optional*, defaults to `True`):
            Ablation switch for the refinement regularizer L_rr (the two KL terms). `False`: the variational encoders
            have no log-variance APEnc layer, Z = mean in training too, and `kl_text` / `kl_vision` are `None` and
            absent from the loss.
        use_alignment_regularizer (`bool`, *optional*, defaults to `True`):
            Ablation switch for the alignment regularizer L_ar. `False`: the model has no discriminator, and
            `alignment_loss` is `None` and absent from the loss.
        text_only (`bool`, *optional*, defaults to `False`):
            Text-only baseline: no vision tower, no vision projection or variational encoder, no discriminator and
            no fusion APEnc layers; the text latents Z^T go straight to the same task head. `pixel_values`,
            `image_features` and `image_mask` are accepted and ignored, so the processor's output runs unchanged;
            `kl_vision` and `alignment_loss` are `None`. `vision_config` is kept (and saved) but builds nothing.
        freeze_vision_encoder (`bool`, *optional*, defaults to `True`):
            Keep the vision tower frozen and in eval mode (BatchNorm statistics do not drift), which also makes its
            features cacheable. `False` trains it.
        entity_pooling (`str`, *optional*, defaults to `"start"`):
            Relation head only. `"start"`: the fused states at the `<s>` and `<o>` entity start markers.
            `"span_mean"`: the mean of the fused states strictly between each entity's markers, leaving out the
            other entity's markers (which nested or identical spans put there).
        relation_type_signatures (`list[list[str]]`, *optional*):
            Relation head only: the `[head type, tail type]` pairs (lower case, see
            `re_encoding_mmib.normalize_entity_type`) that carry a relation other than the no-relation label in
            the training data, recorded by the training run. NER -> RE classifies only the entity pairs whose
            predicted types match one of them (the others are counted as skipped); `None` (checkpoints that do not
            record them) classifies every pair. Relation classification of given spans never consults them.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            Epsilon of the APEnc layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the MMIB layers (the towers use their own).

    Example:

    ```python
    >>> from transformers import BertConfig, ResNetConfig
    >>> from mmib import MMIBConfig, MMIBForTokenClassification

    >>> config = MMIBConfig(text_config=BertConfig(), vision_config=ResNetConfig(), num_crops=4)
    >>> model = MMIBForTokenClassification(config)
    ```
    """

    model_type = "mmib"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    vision_feature_pooling: Literal["pooler", "cls", "mean"] | None = None
    latent_size: int | None = None
    apenc_num_attention_heads: int = 12
    apenc_intermediate_size: int | None = None
    apenc_dropout: float = 0.1
    classifier_dropout: float | None = None
    num_crops: int = 4
    beta_text: float = 0.1
    beta_vision: float = 0.1
    alignment_weight: float = 1.0
    kl_reduction: Literal["mean", "sum"] = "mean"
    alignment_pooling: Literal["mean", "first"] = "mean"
    num_negatives: int = 1
    latent_logvar_init: float | None = -6.0
    use_refinement_regularizer: bool = True
    use_alignment_regularizer: bool = True
    text_only: bool = False
    freeze_vision_encoder: bool = True
    entity_pooling: Literal["start", "span_mean"] = "start"
    relation_type_signatures: list[list[str]] | None = None
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.text_config = _build_sub_config(self.text_config, "bert")
        self.vision_config = _build_sub_config(self.vision_config, "resnet")
        if self.vision_feature_pooling is None:
            self.vision_feature_pooling = default_pooling(self.vision_config)
        if self.latent_size is None:
            self.latent_size = self.text_config.hidden_size
        if self.apenc_intermediate_size is None:
            self.apenc_intermediate_size = 4 * self.latent_size
        if self.latent_size % self.apenc_num_attention_heads:
            raise ValueError(
                f"latent_size ({self.latent_size}) must be divisible by apenc_num_attention_heads "
                f"({self.apenc_num_attention_heads})."
            )
        _check_choice("vision_feature_pooling", self.vision_feature_pooling, ("pooler", "cls", "mean"))
        _check_choice("kl_reduction", self.kl_reduction, ("mean", "sum"))
        _check_choice("alignment_pooling", self.alignment_pooling, ("mean", "first"))
        _check_choice("entity_pooling", self.entity_pooling, ("start", "span_mean"))
        if self.num_crops < 0 or self.num_negatives < 0:
            raise ValueError("num_crops and num_negatives must be >= 0.")
        super().__post_init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "MMIBConfig":
        """
        `PreTrainedConfig.from_pretrained`, refusing the folder or Hub id of another model type (e.g. a plain BERT or
        ResNet checkpoint) instead of building a default MMIB config from it with a warning, so that
        `MMIB*.from_pretrained` cannot silently return a randomly initialised model.

        Raises:
            ValueError: the checkpoint's `model_type` is not `"mmib"`; the message says what was found and how to
                build an MMIB model around such a checkpoint.
        """
        config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **dict(kwargs))
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            architectures = ", ".join(config_dict.get("architectures") or []) or "unknown architecture"
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a {found!r} checkpoint ({architectures}), not an MMIB one "
                "(model_type 'mmib'). MMIB*.from_pretrained loads only checkpoints saved by MMIB. To build a new MMIB "
                "model around it as the text or vision tower, use mmib.build_model_and_processor(task, text_model, "
                "vision_model, id2label) or MMIBForTokenClassification.from_text_vision_pretrained(text_model, "
                "vision_model)."
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def vision_feature_size(self) -> int:
        """
        Size of the pooled vision vector: the last stage width `hidden_sizes[-1]` for CNNs (ResNet, ConvNeXt),
        `hidden_size` for ViT, CLIP and SigLIP vision; for a timm tower the width of its head pooling
        (`head_hidden_size`, e.g. 1024 for MobileNetV3 whose head adds a 1x1 conv) or of its feature map
        (`num_features`) for `"cls"` / `"mean"` pooling.
        """
        return feature_size(self.vision_config, self.vision_feature_pooling)


def _build_sub_config(value: dict | PreTrainedConfig | None, default_model_type: str) -> PreTrainedConfig:
    if value is None:
        return CONFIG_MAPPING[default_model_type]()
    if isinstance(value, dict):
        value = dict(value)
        return CONFIG_MAPPING[value.pop("model_type", default_model_type)](**value)
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


MMIBConfig.register_for_auto_class()

__all__ = ["MMIBConfig"]
