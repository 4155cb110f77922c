"""The stages of `slc label`, each on a block of listed files in one
process (what `slc.apps.label_run` runs in each shape): read, decode and
featurise (`read_batch`), classify (`Labeller`), or all of it at once
(`label_batch`). A recording longer than the bundle's `whole_clip_max_s` is
streamed from its file a block at a time (`Classifier.classify_file`): its
waveform is never held whole, and a local file is never read whole into
memory.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import soundfile as sf

from slc import audio
from slc.apps.label_output import output_schema
from slc.batch.columns import arrays_of, flat_list_column
from slc.batch.decode import Decoded, decode, decode_items
from slc.batch.inputs import read_bytes
from slc.batch.progress import Reporter
from slc.config import LabelConfig
from slc.runtime.classifier import Classifier, Prediction

log = logging.getLogger(__name__)

# Between reading and classifying: features of a whole clip, or the waveform of one classified by windows.
_READ_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("error", pa.string()),
        ("detail", pa.string()),
        ("duration_s", pa.float64()),
        ("features", pa.large_list(pa.float32())),  # frames * num_mel_bins, row-major
        ("waveform", pa.large_list(pa.float32())),
    ]
)


@functools.lru_cache(maxsize=2)
def _classifier(bundle: str, variant: str | None, open_set: bool) -> Classifier:
    """One per worker process, kept across read tasks; one thread, as tasks are many."""
    return Classifier(bundle, variant, threads=1, open_set=open_set)


@functools.lru_cache(maxsize=2)
def _labeller(bundle: str, config: LabelConfig) -> Labeller:
    """One per worker process, kept across fused tasks. Clips one at a time:
    on CPUs onnxruntime runs a clip alone as fast as in a batch, and the
    clips of one task differ in length, so a batch pays for its padding
    (the tiny model: 1.3x slower in batches of 16)."""
    return Labeller(bundle, config, batch_size=1)


def read_batch(
    batch: pa.Table, filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig
) -> pa.Table:
    """Items (from `list_inputs`) -> rows of _READ_SCHEMA: the features of a
    whole clip, the waveform of one to classify by windows, or the error."""
    classifier = _classifier(bundle, config.variant, config.open_set)
    decoded = decode_items(batch.to_pylist(), filesystems, _audio_config(classifier, config))
    return _read_table(decoded, classifier, config)


def label_batch(batch: pa.Table, filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig) -> pa.Table:
    """Items (from `list_inputs`) -> rows of `output_schema`, read, decoded,
    featurised and classified in this process. A recording whose header
    promises more than `whole_clip_max_s` is streamed from its file (a local
    path, else its bytes) instead of decoded whole."""
    labeller = _labeller(bundle, config)
    audio_config = _audio_config(labeller.classifier, config)
    items = batch.to_pylist()
    sources = _sources(items, filesystems)
    longest = labeller.classifier.window.whole_clip_max_s
    streamed = {i for i, s in enumerate(sources) if items[i]["error"] is None and _header_s(s) > longest}
    in_memory = [i for i in range(len(items)) if i not in streamed]
    decoded = [decode(items[i], sources[i], audio_config) for i in in_memory]
    rows: list[dict[str, Any]] = [{}] * len(items)
    for i, row in zip(in_memory, labeller(_read_table(decoded, labeller.classifier, config)).to_pylist()):
        rows[i] = row
    for i in streamed:
        rows[i] = labeller.stream(items[i]["path"], sources[i], audio_config.max_duration_s)
    return pa.Table.from_pylist(rows, schema=output_schema(config.segments))


def _audio_config(classifier: Classifier, config: LabelConfig):
    if config.max_duration_s is None:
        return classifier.audio_config
    return dataclasses.replace(classifier.audio_config, max_duration_s=config.max_duration_s)


def _sources(items: list[dict[str, Any]], filesystems: list[pafs.FileSystem]) -> list[audio.Source | Exception]:
    """What to decode each item from: the path of a plain local file (read
    by libsndfile as it goes), else its bytes or the error reading them."""
    local = [
        isinstance(filesystems[item["fs"]], pafs.LocalFileSystem)
        and item["member"] is None and item["data"] is None and item.get("span") is None
        for item in items
    ]  # fmt: skip
    others = [i for i, is_local in enumerate(local) if not is_local]
    try:
        read = read_bytes([items[i] for i in others], filesystems) if others else []
    except Exception as error:  # a bug reading must still give every item its row
        log.exception("reading %d files failed", len(others))
        read = [error] * len(others)
    sources: list[audio.Source | Exception] = [item["source"] for item in items]
    for i, data in zip(others, read):
        sources[i] = data
    return sources


def _header_s(source: audio.Source | Exception) -> float:
    """Seconds of audio a file's header promises; 0 when it cannot be read
    (decoding then says why)."""
    if isinstance(source, Exception):
        return 0.0
    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (RuntimeError, OSError, ValueError, TypeError):
        return 0.0
    return info.frames / info.samplerate if info.samplerate else 0.0


def _read_table(decoded: list[Decoded], classifier: Classifier, config: LabelConfig) -> pa.Table:
    """Outcomes -> rows of _READ_SCHEMA: whole clips featurised, longer ones
    (all with `segments`) kept as waveforms for windows."""
    rate = classifier.feature_config.sample_rate
    longest = classifier.window.whole_clip_max_s * rate
    whole = [i for i, d in enumerate(decoded) if d.ok and not (config.segments or len(d.clip) > longest)]
    features: list[np.ndarray | None] = [None] * len(decoded)
    for i, clip_features in zip(whole, classifier.featurize([decoded[i].clip for i in whole])):
        features[i] = clip_features
    waveforms = [d.clip if d.ok and features[i] is None else None for i, d in enumerate(decoded)]
    columns = {
        "path": [d.path for d in decoded],
        "error": [d.reason for d in decoded],
        "detail": [d.detail for d in decoded],
        "duration_s": [len(d.clip) / rate if d.ok else None for d in decoded],
        "features": flat_list_column(features, np.float32),
        "waveform": flat_list_column(waveforms, np.float32),
    }
    return pa.table(columns, schema=_READ_SCHEMA)


class Labeller:
    """Rows of _READ_SCHEMA -> rows of `output_schema` (a Ray Data actor in
    the pool shape). A batch that fails is tried again clip by clip, so only
    the clip at fault gets `error=failed`; each failure is logged with its
    traceback."""

    def __init__(
        self, bundle: str, config: LabelConfig, report: Reporter | None = None, batch_size: int = 16,
        device: str = "cpu",
    ) -> None:  # fmt: skip
        self.classifier = Classifier(
            bundle, config.variant, config.threads, batch_size, open_set=config.open_set, device=device
        )  # fmt: skip
        self.config = config
        self.allow = list(config.allow) or None
        self.report = report

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["path", "error", "detail", "duration_s"]).to_pylist()
        features = arrays_of(batch["features"], self.classifier.feature_config.num_mel_bins)
        waveforms = arrays_of(batch["waveform"], 1)
        predictions: dict[int, Prediction] = {}
        whole = [i for i, f in enumerate(features) if f is not None]
        try:
            predictions.update(zip(whole, self._classify_whole([features[i] for i in whole], [rows[i] for i in whole])))
        except Exception:
            log.exception("classifying a batch of %d clips failed; trying them one by one", len(whole))
            for i in whole:
                self._one(rows[i], predictions, i, lambda i=i: self._classify_whole([features[i]], [rows[i]])[0])
        for i in (i for i, w in enumerate(waveforms) if w is not None):
            self._one(rows[i], predictions, i, lambda i=i: self._classify_windows(waveforms[i][:, 0]))
        table = [output_row(row, predictions.get(i), self.config) for i, row in enumerate(rows)]
        if self.report:
            self.report(files=len(rows), audio_s=sum(r["duration_s"] or 0.0 for r in table))
        return pa.Table.from_pylist(table, schema=output_schema(self.config.segments))

    def stream(self, path: str, source: audio.Source | Exception, max_duration_s: float) -> dict[str, Any]:
        """A recording classified from its file a block at a time -> its
        output row. Longer than `max_duration_s` is `too_long`, as when
        decoded whole; an AudioError's reason is the row's error, any other
        failure is `failed`."""
        row: dict[str, Any] = {"path": path, "error": None, "detail": None}
        prediction = None
        try:
            if isinstance(source, Exception):
                raise source
            if (seconds := _header_s(source)) > max_duration_s:
                raise audio.TooLongAudioError(path, f"{seconds:.1f} s of audio, at most {max_duration_s:.1f} s allowed")
            config = self.config
            prediction = self.classifier.classify_file(source, self.allow, config.min_confidence, config.segments, path)
        except audio.AudioError as error:
            row.update(error=error.reason, detail=str(error))
        except Exception as error:
            log.exception("classifying %s failed", path)
            row.update(error="failed", detail=f"{path}: {type(error).__name__}: {error}")
        return output_row(row, prediction, self.config)

    def _classify_whole(self, features: list[np.ndarray], rows: list[dict[str, Any]]) -> list[Prediction]:
        durations = [row["duration_s"] for row in rows]
        return self.classifier.classify_features(features, durations, self.allow, self.config.min_confidence)

    def _classify_windows(self, waveform: np.ndarray) -> Prediction:
        return self.classifier.classify(waveform, self.allow, self.config.min_confidence, segments=self.config.segments)

    @staticmethod
    def _one(row: dict[str, Any], predictions: dict[int, Prediction], i: int, classify) -> None:
        """`predictions[i] = classify()`, or the failure as the row's error."""
        try:
            predictions[i] = classify()
        except Exception as error:
            log.exception("classifying %s failed", row["path"])
            row.update(error="failed", detail=f"{row['path']}: {type(error).__name__}: {error}")


def output_row(row: dict[str, Any], prediction: Prediction | None, config: LabelConfig) -> dict[str, Any]:
    """A row of `path, error, detail` and its prediction (None: failed) -> an output row."""
    out: dict[str, Any] = {**row, "language": None, "confidence": None, "probabilities": None, "duration_s": None}
    if prediction is not None and row["error"] is None:
        out.update(
            language=prediction.language,
            confidence=prediction.confidence,
            probabilities=prediction.top(config.top_k),
            duration_s=prediction.duration_s,
        )
    if config.segments:
        segments = prediction.segments if prediction is not None and row["error"] is None else None
        out["segments"] = None if segments is None else [dataclasses.asdict(s) for s in segments]
    return out
