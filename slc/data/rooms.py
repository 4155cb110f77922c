"""Reverberation from synthetic shoebox rooms.

A room is its size, its reverberation time and where the speaker and the
microphone stand; pyroomacoustics' image source model turns that into an
impulse response (wall absorption from Sabine's formula), the same on every
machine, so a recipe that names a room reproduces its copy exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pyroomacoustics as pra
import scipy.signal

Point = tuple[float, float, float]

# Sabine: RT60 = SABINE * volume / (absorption * surface); absorption cannot exceed 1.
SABINE = 24.0 * np.log(10.0) / pra.constants.get("c")
# Speaker and microphone keep this far from every wall.
MARGIN_M = 0.5
# pyroomacoustics' reflection order for an RT60 follows the sound for the whole
# RT60 along the room's shortest side; half of it changes the response by less
# than -33 dB of its energy and not its T30 (measured over rooms drawn with the
# default config), at a sixth of the cost: the image count grows as order^3.
ORDER_SHARE = 0.5


def shortest_rt60(room_m: Point) -> float:
    """The shortest reverberation time (s) Sabine's formula allows in a room
    of this size: every wall absorbing everything."""
    length, width, height = room_m
    surface = 2.0 * (length * width + length * height + width * height)
    return SABINE * length * width * height / surface


def draw_room(
    rng: np.random.Generator, low_m: Point, high_m: Point, rt60_s: tuple[float, float]
) -> tuple[Point, float, Point, Point]:
    """A random room: (size, RT60, source, microphone), metres and seconds,
    rounded to cm and ms. RT60 is uniform in `rt60_s`, raised to 1.2x the
    room's `shortest_rt60` where the range is drier than the room can be."""
    room = tuple(round(float(rng.uniform(lo, hi)), 2) for lo, hi in zip(low_m, high_m))
    floor = 1.2 * shortest_rt60(room)
    rt60 = round(float(rng.uniform(max(rt60_s[0], floor), max(rt60_s[1], floor))), 3)

    def place() -> Point:
        return tuple(round(float(rng.uniform(MARGIN_M, side - MARGIN_M)), 2) for side in room)

    return room, rt60, place(), place()  # type: ignore[return-value]


def impulse_response(room_m: Point, rt60_s: float, source_m: Point, mic_m: Point, sample_rate: int) -> np.ndarray:
    """`float64[n]` impulse response from source to microphone, starting at
    the direct sound (its propagation delay removed, so speech keeps its
    timing). Raises ValueError for a point outside the room or an RT60
    shorter than `shortest_rt60`."""
    for name, point in (("source", source_m), ("microphone", mic_m)):
        if not all(0.0 < p < side for p, side in zip(point, room_m)):
            raise ValueError(f"{name} at {point} m is outside the {room_m} m room")
    if rt60_s <= shortest_rt60(room_m):
        raise ValueError(f"a {room_m} m room cannot reverberate for only {rt60_s} s; its shortest RT60 is "
                         f"{shortest_rt60(room_m):.3f} s")
    absorption, full_order = pra.inverse_sabine(rt60_s, room_m)
    max_order = math.ceil(full_order * ORDER_SHARE)
    room = pra.ShoeBox(room_m, fs=sample_rate, materials=pra.Material(absorption), max_order=max_order)
    room.add_source(list(source_m))
    room.add_microphone(list(mic_m))
    room.compute_rir()
    response = np.asarray(room.rir[0][0], dtype=np.float64)
    # Each reflection is a fractional-delay filter centred half its length
    # after the reflection's arrival; cutting at the direct sound's arrival
    # keeps that filter whole.
    distance = float(np.linalg.norm(np.subtract(source_m, mic_m)))
    return response[round(distance / pra.constants.get("c") * sample_rate) :]


def reverberate(audio: np.ndarray, response: np.ndarray) -> np.ndarray:
    """`audio` (`float32[n]`) heard through `response`, cut to n samples (the
    tail past the end is lost, as when a recording stops) and scaled to the
    dry audio's power, so level and SNR settings mean the same with or
    without a room."""
    wet = scipy.signal.oaconvolve(audio.astype(np.float64), response)[: len(audio)]
    wet_power = float(np.mean(np.square(wet)))
    if wet_power == 0.0:
        return audio
    return (wet * np.sqrt(float(np.mean(np.square(audio, dtype=np.float64))) / wet_power)).astype(np.float32)
