"""Install the Debian packages the tests use: real speech with transcripts, and a speech synthesiser.

``pocketsphinx-testdata`` ships LibriVox clips with transcripts (the audio encoder and Whisper tests, and the
benchmark's audio suite); ``espeak-ng`` speaks real chat sentences for the joint space's speech-sentence pairs
(``multimodal``'s training and tests/multimodal/test_joint.py).
Installed with apt-get when it exists and we are root;
otherwise (another OS, no root, no network) this says what it skipped and which tests will skip because of it,
and exits 0, so the README's test command runs the same everywhere.

Usage: python scripts/setup_test_data.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("pocketsphinx-testdata", "espeak-ng")
# a file of each package: present means installed, so a second run does nothing
MARKERS = {"pocketsphinx-testdata": Path("/usr/share/pocketsphinx/test/data/librivox/transcription"),
           "espeak-ng": Path("/usr/bin/espeak-ng")}
SKIPPED_TESTS = ("the audio tests that read LibriVox speech (tests/arrowengine/test_audio_encoder.py) and the "
                 "joint-space tests that speak sentences (tests/multimodal/test_joint.py)")


def missing() -> list[str]:
    """The packages whose marker file is absent."""
    return [name for name in PACKAGES if not MARKERS[name].exists()]


def main() -> int:
    """Install what is missing where possible; always exit 0 (what was skipped is printed)."""
    todo = missing()
    if not todo:
        print(f"test data: {', '.join(PACKAGES)} already installed")
        return 0
    if shutil.which("apt-get") is None:
        print(f"test data: SKIPPED {', '.join(todo)} (no apt-get on this system); {SKIPPED_TESTS} will skip")
        return 0
    if os.geteuid() != 0:
        print(f"test data: SKIPPED {', '.join(todo)} (not root); run: sudo apt-get install -y {' '.join(todo)} "
              f"- until then {SKIPPED_TESTS} will skip")
        return 0
    print(f"test data: apt-get install {' '.join(todo)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *todo]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"test data: SKIPPED {', '.join(todo)} ({' '.join(command[:2])} exit {result.returncode}: "
                  f"{result.stderr.strip()[-300:]}); {SKIPPED_TESTS} will skip")
            return 0
    still = missing()
    print(f"test data: installed {', '.join(todo)}" + (f"; still missing {', '.join(still)}" if still else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
