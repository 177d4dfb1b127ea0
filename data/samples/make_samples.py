"""Rebuild the bundled sample audio from the shared corpus copies (run once by a maintainer).

    python data/samples/make_samples.py ../shared/data

Writes, next to this file:
- ravdess_actor0N.flac: the 16 RAVDESS clips of actor N (8 emotions x 2 statements, normal
  intensity) joined end to end in a seeded order, 16 kHz mono; RAVDESS clips last 3-4 s, and
  joining them makes recordings long enough for the 30 s length filter;
- ravdess_clips.csv: where each clip lies in its recording, with its emotion, gender and text;
- ami_es2004_excerpt.flac (+ .rttm and speaker transcripts), apollo11.mp3: copied unchanged in content.
Needs the ffmpeg command line tool.
"""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
import sys
import wave
from pathlib import Path

HERE = Path(__file__).resolve().parent
ACTORS = ["Actor_01", "Actor_02", "Actor_03", "Actor_04", "Actor_05", "Actor_06"]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def main(shared_data: Path) -> None:
    ravdess = shared_data / "real_emotion_speech"
    rows = list(csv.DictReader(open(ravdess / "metadata.csv")))
    table = []
    for actor in ACTORS:
        clips = sorted((r for r in rows if r["speaker_id"] == actor), key=lambda r: r["file"])
        random.Random(actor).shuffle(clips)
        name = f"ravdess_{actor.lower().replace('_', '')}"
        listing = HERE / f"{name}.txt"
        listing.write_text("".join(f"file '{ravdess / c['file']}'\n" for c in clips))
        ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-ar", "16000", "-ac", "1", str(HERE / f"{name}.flac"))
        listing.unlink()
        t = 0.0
        for c in clips:
            with wave.open(str(ravdess / c["file"])) as w:
                duration = w.getnframes() / w.getframerate()
            table.append({"recording": f"{name}.flac", "clip": c["file"], "start": round(t, 3), "end": round(t + duration, 3),
                          "emotion": c["emotion"], "gender": c["gender"], "speaker_id": actor, "text": c["statement_text"]})
            t += duration
    with open(HERE / "ravdess_clips.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)

    ami = shared_data / "real_speech" / "ami_es2004_excerpt"
    ffmpeg("-i", str(ami / "mixture.wav"), str(HERE / "ami_es2004_excerpt.flac"))
    shutil.copyfile(ami / "mixture.rttm", HERE / "ami_es2004_excerpt.rttm")
    for text in sorted((ami / "text").glob("*.txt")):
        shutil.copyfile(text, HERE / f"ami_es2004_excerpt.{text.name.split('.')[1]}.txt")
    shutil.copyfile(shared_data / "real_speech" / "apollo11_air_to_ground" / "apollo11.mp3", HERE / "apollo11.mp3")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data").resolve())
