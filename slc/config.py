"""Settings for every stage, as dataclasses: the one home of defaults.

Each config round-trips through plain dicts, JSON and YAML (slc.config_io), so
the resolved settings can be written next to every artifact and read back to
rebuild it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

SAMPLE_RATE = 16_000


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """How a file becomes a clip: mono float32 at `sample_rate`."""

    sample_rate: int = SAMPLE_RATE
    trim_silence: bool = True
    # Frames quieter than this many dB below the loudest frame count as silence.
    trim_top_db: float = 40.0
    min_duration_s: float = 0.5
    max_duration_s: float = 600.0


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Kaldi fbank settings; the numbers of transformers' Speech2TextFeatureExtractor."""

    sample_rate: int = SAMPLE_RATE
    num_mel_bins: int = 80
    frame_length: int = 400  # samples: 25 ms at 16 kHz
    hop_length: int = 160  # samples: 10 ms at 16 kHz
    fft_length: int = 512
    preemphasis: float = 0.97
    low_freq_hz: float = 20.0
    high_freq_hz: float = 8000.0
    mel_floor: float = 1.192092955078125e-07  # float32 epsilon, as Kaldi
    normalize: bool = True  # utterance mean and variance normalisation


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Group-aware train/val/test split by a hash of the group."""

    MODES: typing.ClassVar[tuple[str, ...]] = ("hash", "from-release")

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    # "from-release": the split the corpus gives a clip (Common Voice's TSVs,
    # a dataset's split names), a clip without one taking its group's; the
    # fractions then apply only to groups the release leaves out.
    mode: str = "hash"

    def __post_init__(self) -> None:
        fractions = (self.train, self.val, self.test)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
        if self.mode not in self.MODES:
            raise ValueError(f"split mode must be one of {list(self.MODES)}, got {self.mode!r}")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Waveform augmentation of training clips at ingest: `copies` augmented
    copies of every training clip, each with its own random recipe. Every
    `*_prob` is the chance that a copy gets that part; ranges are (min, max),
    drawn uniformly."""

    # Noise colour -> exponent x of its power spectral density, 1/f^x.
    NOISE_COLORS: typing.ClassVar[dict[str, float]] = {"white": 0.0, "pink": 1.0, "brown": 2.0}
    # Codec -> soundfile (format, subtype); libsndfile >= 1.1 encodes all three.
    CODECS: typing.ClassVar[dict[str, tuple[str, str]]] = {
        "mp3": ("MP3", "MPEG_LAYER_III"), "vorbis": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS"),
    }  # fmt: skip
    EQ_KINDS: typing.ClassVar[tuple[str, ...]] = ("peak", "lowshelf", "highshelf")

    copies: int = 0
    seed: int = 0
    speed_prob: float = 0.8
    speed: tuple[float, float] = (0.85, 1.15)  # tempo and pitch factor, as Kaldi's speed perturbation
    pitch_prob: float = 0.4
    pitch_semitones: tuple[float, float] = (-5.0, 5.0)  # pitch, tempo kept; formants too unless warped
    # Vocal tract length: the spectral envelope (formants) scaled by a factor
    # apart from the pitch, which then moves the pitch alone.
    formant_prob: float = 0.5
    formant_warp: tuple[float, float] = (0.85, 1.15)
    noise_prob: float = 0.8
    noise_colors: tuple[str, ...] = ("white", "pink", "brown")
    snr_db: tuple[float, float] = (3.0, 30.0)  # speech power over noise power
    gain_prob: float = 0.5
    gain_db: tuple[float, float] = (-12.0, 6.0)  # then clipped at full scale, as an ADC does
    band_limit_prob: float = 0.3
    band_limit_rates: tuple[int, ...] = (8000, 11025)  # resample through these rates and back
    silence_prob: float = 0.5
    silence_s: tuple[float, float] = (0.0, 1.0)  # leading and trailing, each
    # Noise floor under every copy, dB relative to speech power: a real recording
    # never holds digital zeros. None leaves the clip's own silences as they are.
    floor_db: float | None = -60.0
    # A shoebox room (pyroomacoustics' image source model): size between the
    # corners, reverberation time, speaker and microphone anywhere 0.5 m from the walls.
    reverb_prob: float = 0.3
    room_min_m: tuple[float, float, float] = (3.0, 3.0, 2.4)
    room_max_m: tuple[float, float, float] = (10.0, 8.0, 4.0)
    rt60_s: tuple[float, float] = (0.15, 0.7)  # raised where a room cannot be that dry
    # Microphone and room colouring: random peaking and shelving bands.
    eq_prob: float = 0.3
    eq_bands: tuple[int, int] = (1, 3)
    eq_hz: tuple[float, float] = (100.0, 6000.0)  # drawn on a log scale
    eq_gain_db: tuple[float, float] = (-12.0, 12.0)
    eq_octaves: tuple[float, float] = (0.5, 2.0)  # a band's width
    telephone_prob: float = 0.1  # 300-3400 Hz, 8 kHz G.711 mu-law
    codec_prob: float = 0.2
    codecs: tuple[str, ...] = ("mp3", "vorbis")  # opus costs 8x their time
    # soundfile's compression_level, 0 (best) to 1 (smallest); at 16 kHz 0.8-0.98
    # is about 30-24 kbps MP3, 36-28 kbps Vorbis and 60-12 kbps Opus.
    codec_level: tuple[float, float] = (0.8, 0.98)

    def __post_init__(self) -> None:
        if self.copies < 0 or self.seed < 0:
            raise ValueError(f"copies and seed must be >= 0, got copies={self.copies}, seed={self.seed}")
        for name in (f.name for f in dataclasses.fields(self) if f.name.endswith("_prob")):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        for name in (
            "speed", "pitch_semitones", "formant_warp", "snr_db", "gain_db", "silence_s", "rt60_s", "eq_bands",
            "eq_hz", "eq_gain_db", "eq_octaves", "codec_level",
        ):  # fmt: skip
            span = getattr(self, name)
            if len(span) != 2 or span[0] > span[1]:
                raise ValueError(f"{name} must be a (min, max) pair with min <= max, got {span}")
        if self.speed[0] <= 0 or self.silence_s[0] < 0:
            raise ValueError(
                f"speed must be > 0 and silence_s >= 0, got speed={self.speed}, silence_s={self.silence_s}"
            )
        if abs(self.pitch_semitones[0]) > 12 or abs(self.pitch_semitones[1]) > 12:
            raise ValueError(f"pitch_semitones must be within [-12, 12], got {self.pitch_semitones}")
        self._check_choices()
        self._check_room_and_channel()

    def _check_choices(self) -> None:
        for name, known, prob in (
            ("noise_colors", self.NOISE_COLORS, self.noise_prob), ("codecs", self.CODECS, self.codec_prob)
        ):
            chosen = getattr(self, name)
            if any(c not in known for c in chosen) or (prob > 0 and not chosen):
                raise ValueError(f"{name} must name some of {list(known)}, got {list(chosen)}")
        if any(not 0 < rate < SAMPLE_RATE for rate in self.band_limit_rates) or (
            self.band_limit_prob > 0 and not self.band_limit_rates
        ):
            raise ValueError(
                f"band_limit_rates must be rates in Hz below {SAMPLE_RATE}, got {list(self.band_limit_rates)}"
            )

    def _check_room_and_channel(self) -> None:
        if not (0.5 <= self.formant_warp[0] and self.formant_warp[1] <= 2.0):
            raise ValueError(f"formant_warp must be within [0.5, 2], got {self.formant_warp}")
        corners = (self.room_min_m, self.room_max_m)
        if any(len(c) != 3 for c in corners) or not all(1.0 < lo <= hi for lo, hi in zip(*corners)):
            raise ValueError(
                f"room_min_m and room_max_m must be (length, width, height) in m, each over 1 m and "
                f"min <= max, got {self.room_min_m} and {self.room_max_m}"
            )
        if self.rt60_s[0] <= 0:
            raise ValueError(f"rt60_s must be > 0, got {self.rt60_s}")
        if self.eq_bands[0] < 1 or self.eq_hz[0] <= 0 or self.eq_octaves[0] <= 0:
            raise ValueError(
                f"eq_bands must be >= 1, eq_hz and eq_octaves > 0, got eq_bands={self.eq_bands}, "
                f"eq_hz={self.eq_hz}, eq_octaves={self.eq_octaves}"
            )
        if not (0.0 <= self.codec_level[0] and self.codec_level[1] < 1.0):
            raise ValueError(f"codec_level must be within [0, 1), got {self.codec_level}")


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Corpus -> features -> Parquet shards."""

    audio: AudioConfig = dataclasses.field(default_factory=AudioConfig)
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    labels: tuple[str, ...] = ()  # empty: every language the corpus brings
    # Corpus layout: "auto" (recognised by a look at the input), "tree",
    # "manifest", "huggingface", "commonvoice", "webdataset" or "lhotse".
    format: str = "auto"
    lang_column: str | None = None  # None: the first of language, lang, locale, label
    # Languages outside `labels` that become the class `other` (slc.data.background),
    # or ("all-others",); at most `background_per_lang` clips of each.
    background: tuple[str, ...] = ()
    background_per_lang: int = 100
    clips_per_task: int = 16
    rows_per_file: int = 128  # also the unit of parallel writing: smaller files, more parallelism


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Encoder shape + pooling head. Build from a preset with
    `ModelConfig.preset("tiny")`. `family` is `speech2text` (transformers'
    Speech2Text encoder: `init_from` names a Speech2Text checkpoint, a local
    directory or a hub name where there is a network, whose encoder shape and
    weights replace the preset's) or `tdnn` (an x-vector TDNN of
    `conv_channels` channels: no pretrained weights, but on a CPU it learns a
    language from fewer clips and runs faster)."""

    FAMILIES: typing.ClassVar[tuple[str, ...]] = ("speech2text", "tdnn")

    family: str = "speech2text"
    d_model: int = 144
    encoder_layers: int = 4
    encoder_attention_heads: int = 4
    encoder_ffn_dim: int = 576
    conv_channels: int = 256
    conv_kernel_sizes: tuple[int, ...] = (5, 5)
    max_source_positions: int = 6000  # after 4x subsampling: 240 s of audio
    dropout: float = 0.1  # Speech2Text's; the TDNN's frame layers have none
    attention_dropout: float = 0.1
    head_dropout: float = 0.2
    pooling_hidden: int = 128
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.family not in self.FAMILIES:
            raise ValueError(f"model family must be one of {list(self.FAMILIES)}, got {self.family!r}")
        if self.family != "speech2text" and self.init_from:
            raise ValueError(f"init_from loads Speech2Text encoders; the {self.family} family has no pretrained weights")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
        return cls(**{**MODEL_PRESETS[name], **overrides})


# Encoder shapes: tiny for CPUs and tests; small is s2t-small's encoder; base
# is the size of the reference 188 MB fp32 model; tdnn is the x-vector family.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(family="speech2text", d_model=144, encoder_layers=4, encoder_attention_heads=4,
                 encoder_ffn_dim=576, conv_channels=256),
    "small": dict(family="speech2text", d_model=256, encoder_layers=12, encoder_attention_heads=4,
                  encoder_ffn_dim=2048, conv_channels=1024),
    "base": dict(family="speech2text", d_model=512, encoder_layers=12, encoder_attention_heads=8,
                 encoder_ffn_dim=2048, conv_channels=2048),
    "tdnn": dict(family="tdnn", conv_channels=256),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Ray Train run: schedule, batches, augmentation of batches, resources."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    epochs: int = 50
    batch_size: int = 32  # per worker
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    label_smoothing: float = 0.1
    max_frames: int = 600  # random crop of training clips: 6 s
    eval_max_frames: int = 3000  # validation clips are whole up to 30 s
    time_masks: int = 2  # SpecAugment, training batches only
    time_mask_frames: int = 40
    freq_masks: int = 2
    freq_mask_bins: int = 10
    balance: str = "weights"  # class imbalance: "weights" (loss weights) or "none"
    patience: int | None = None  # epochs without a better val F1 before stopping
    workers: int = 1
    cpus_per_worker: float | None = None  # None: 1, or less so Ray Data keeps a CPU
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    keep_checkpoints: int = 2
    max_failures: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.balance not in ("weights", "none"):
            raise ValueError(f"balance must be 'weights' or 'none', got {self.balance!r}")


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """Sliding windows over a long recording: per-window probabilities, merged
    into a timeline of language segments."""

    window_s: float = 4.0
    hop_s: float = 2.0
    # Longer clips are classified by windows: the model trained on clips of at
    # most this length (TrainConfig.eval_max_frames), and attention cost grows
    # with the square of the length.
    whole_clip_max_s: float = 30.0
    # Hysteresis of the timeline (slc.runtime.smoothing): a language takes
    # over once its log-probability lead over the current one, capped at
    # `evidence_cap` nats per window and weighted by the seconds each window
    # adds, sums to `change_evidence` nat-seconds. With 2 s hops one or two
    # sure windows (4.4, 8.8: a blip of 2-4 s) never flip the timeline, three do.
    change_evidence: float = 9.0
    evidence_cap: float = 2.2  # log(9): a window 90 % sure counts fully

    def __post_init__(self) -> None:
        if min(self.window_s, self.hop_s, self.change_evidence, self.evidence_cap) <= 0:
            raise ValueError(
                f"window_s, hop_s, change_evidence and evidence_cap must be > 0, got {self.window_s}, "
                f"{self.hop_s}, {self.change_evidence} and {self.evidence_cap}"
            )


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Checkpoint -> bundle: parity bound, variant acceptance, measurement."""

    window: WindowConfig = dataclasses.field(default_factory=WindowConfig)
    parity_tolerance: float = 1e-4  # max |p_onnx - p_torch| on padded batches of mixed lengths
    max_f1_loss: float = 0.01  # a variant losing more macro F1 than this against fp32 is rejected
    default_f1_margin: float = 0.005  # the default variant: the fastest within this of fp32
    calibration_clips: int = 64  # validation clips for static int8 calibration
    latency_repeats: int = 30  # timed runs of one 4 s clip per variant (p50 reported)
    # The default is chosen on speed against fp32 timed in alternation, the
    # median of this many rounds: one noisy timing must not pick a slower graph.
    timing_rounds: int = 5
    min_speedup: float = 1.05  # a variant replaces fp32 as the default only this much faster
    # The open-set answer (slc.runtime.openset): the threshold rejects this share
    # of validation clips in the label set; 0 keeps only the background class's answer.
    target_miss: float = 0.02


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """`WS /v1/stream`: the limits of one live stream and of a replica, and
    the voice-activity gate in front of the model."""

    hop_s: float = 0.5  # a partial every hop; a client may ask for 0.25-4 s
    min_audio_s: float = 1.0  # the first window is scored once this much audio arrived
    max_stream_s: float = 3600.0  # audio per stream, at the stream's own rate
    max_streams: int = 64  # open streams per replica; more are refused (close 1013)
    max_frame_bytes: int = 1 << 20  # larger binary frames close the stream (1009)
    idle_timeout_s: float = 30.0  # no message for this long closes the stream (1008)
    # A client more than this far ahead of real time is read no further
    # until real time catches up (the frames wait in TCP's buffers).
    max_lead_s: float = 30.0
    # Voice-activity gate (slc.apps.stream_activity): a window is speech when
    # its loud 10 ms frames reach `speech_level_db` (dBFS, pre-emphasised)
    # and their loudness spans `speech_range_db` (syllables come and go;
    # stationary noise and tones stay within a few dB).
    speech_level_db: float = -45.0
    speech_range_db: float = 6.0
    # The change detector of a stream (slc.runtime.smoothing, as
    # WindowConfig's for a recording): windows every 0.5 s overlap, so each
    # adds half a second of evidence. A sure window counts in full up to
    # 99.9 % (cap log(999)): a real change piles up sure windows, while the
    # windows a misheard clip sways are seldom that sure. Measured on the
    # demo bundle (`bench/stream.py --sweep --recordings 144`): a change is
    # found 4 s into the new language (median), with 16 spurious changes in
    # 144 recordings of 40 s; the offline cap (2.2) would take 6.5 s for 13.
    # Less evidence finds a change sooner and flips more often.
    change_evidence: float = 9.0
    evidence_cap: float = 6.9

    def __post_init__(self) -> None:
        if min(self.change_evidence, self.evidence_cap) <= 0:
            raise ValueError(f"change_evidence and evidence_cap must be > 0, got {self.change_evidence} and {self.evidence_cap}")
        if not 0 < self.hop_s <= 4 or self.min_audio_s <= 0 or self.max_stream_s <= 0:
            raise ValueError(
                f"hop_s must be within (0, 4] s and min_audio_s, max_stream_s > 0, "
                f"got {self.hop_s}, {self.min_audio_s}, {self.max_stream_s}"
            )
        if min(self.max_streams, self.max_frame_bytes) < 1 or min(self.idle_timeout_s, self.max_lead_s) <= 0:
            raise ValueError("max_streams, max_frame_bytes, idle_timeout_s and max_lead_s must be > 0")


INGRESSES = ("proxy", "haproxy")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """The HTTP endpoint: where it listens, what it accepts, how it batches.

    `max_batch_size` and `batch_wait_timeout_s` can change on a running
    deployment (Serve's `user_config`); the rest take a redeploy."""

    host: str = "127.0.0.1"
    port: int = 8000
    # What answers HTTP on host:port: Serve's Python proxy, which relays each
    # request to a replica, or HAProxy (Serve's RAY_SERVE_ENABLE_HA_PROXY), which
    # forwards it to a replica serving HTTP itself (see `slc.apps.serve_launcher`).
    ingress: str = "proxy"
    variant: str | None = None  # the bundle's default when None
    open_set: bool = True  # the bundle's calibration and `unknown` answer (slc.runtime.openset)
    threads: int = 1  # onnxruntime intra-op threads per replica
    num_replicas: int = 1
    num_cpus: float = 1.0  # per replica
    max_batch_size: int = 16
    # Serve waits this long after a batch's first request for more: every
    # request pays it when they come one at a time; under load batches fill
    # while the previous one runs, so a short wait costs no throughput.
    batch_wait_timeout_s: float = 0.002
    # Serve queues at most this many requests per replica; at least
    # max_batch_size, or batches never fill.
    max_ongoing_requests: int = 32
    max_upload_mb: float = 50.0
    max_duration_s: float = 600.0
    stream: StreamConfig = dataclasses.field(default_factory=StreamConfig)

    def __post_init__(self) -> None:
        if self.ingress not in INGRESSES:
            raise ValueError(f"ingress must be one of {', '.join(INGRESSES)}, got {self.ingress!r}")
        if self.max_batch_size < 1 or self.batch_wait_timeout_s < 0:
            raise ValueError(
                f"max_batch_size must be >= 1 and batch_wait_timeout_s >= 0, "
                f"got {self.max_batch_size} and {self.batch_wait_timeout_s}"
            )
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}), or batches never fill"
            )


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Audio archives -> one row per file: its language, or why it has none."""

    FORMATS: typing.ClassVar[tuple[str, ...]] = ("parquet", "csv", "jsonl")
    SHAPES: typing.ClassVar[tuple[str, ...]] = ("fused", "pool", "auto")

    variant: str | None = None  # the bundle's default when None
    format: str = "parquet"
    top_k: int = 3  # probabilities kept per file, highest first
    segments: bool = False  # a timeline of languages per file, from sliding windows
    allow: tuple[str, ...] = ()  # answer only among these languages; empty: all
    min_confidence: float | None = None  # below it the answer is "unknown"; None: the bundle's open-set threshold
    open_set: bool = True  # the bundle's calibration and `unknown` answer (slc.runtime.openset)
    max_duration_s: float | None = None  # longest recording accepted; None: the bundle's audio setting
    concurrency: int = 1  # classifier actors
    threads: int = 1  # onnxruntime threads per actor
    # Logical CPUs per actor and per read task. Reading (decode + featurise) is
    # the costlier part of a short clip, so by default two read tasks share a
    # core beside each actor. Equal values would let Ray Data fuse reading into
    # the actors, leaving it to them alone: they must differ.
    cpus_per_actor: float = 1.0
    cpus_per_task: float = 0.5
    # GPUs per classifier actor (pool shape), whose model then runs on CUDA;
    # None: 1 when the cluster has GPUs, else 0.
    gpus_per_actor: float | None = None
    files_per_task: int = 64  # at most, per task
    # Audio per task, estimated from file sizes: enough work to outweigh a
    # task's overhead (480 s is 0.7 s of the tiny model's work on a core; 240 s
    # was 3-4% slower on bench/label.py, 120 s 10%). A job too small to give
    # every core a task of this size gets smaller ones.
    audio_s_per_task: float = 480.0
    # "fused": read, decode, featurise and classify in one task (no object
    # store between them: for small models on CPUs); "pool": classify in an
    # actor pool of `concurrency` actors (GPUs, large models); "auto": pool
    # when the cluster has GPUs or the model file is over fused_max_model_mb.
    shape: str = "auto"
    fused_max_model_mb: float = 100.0
    # Most output rows per part file. Each task writes its rows as it finishes:
    # what an interrupted run keeps.
    rows_per_file: int = 256
    # A column (or field) of the inputs' corpus holding each clip's language:
    # the summary then says how often the labels agree with it.
    truth_column: str | None = None

    def __post_init__(self) -> None:
        if self.format not in self.FORMATS:
            raise ValueError(f"format must be one of {list(self.FORMATS)}, got {self.format!r}")
        if min(self.top_k, self.concurrency, self.threads, self.files_per_task, self.rows_per_file) < 1:
            raise ValueError("top_k, concurrency, threads, files_per_task and rows_per_file must be >= 1")
        if self.shape not in self.SHAPES:
            raise ValueError(f"shape must be one of {list(self.SHAPES)}, got {self.shape!r}")
        if self.audio_s_per_task <= 0:
            raise ValueError(f"audio_s_per_task must be > 0, got {self.audio_s_per_task}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be >= 0, got {self.gpus_per_actor}")
        if min(self.cpus_per_actor, self.cpus_per_task) <= 0 or self.cpus_per_actor == self.cpus_per_task:
            raise ValueError(
                f"cpus_per_actor and cpus_per_task must be > 0 and differ, got {self.cpus_per_actor} and {self.cpus_per_task}"
            )
