#!/usr/bin/env bash
# The venv scripts/lerobot_interop.py runs LeRobot's reference code in (outside our package).
#
# lerobot-dataset 0.4.4 requires av<16, huggingface-hub<0.36, datasets<4.2 (its METADATA; it does not
# pin torch). It decodes video with torchcodec, or with torchvision's VideoReader, which torchvision
# >= 0.24 no longer has; torchcodec loads the system FFmpeg (Debian bookworm: 5.1).
# torch/torchvision: this machine has no CPU torchvision wheel matching a local CPU torch, so the
# venv reuses the main venv's torch/torchvision (a .pth pointing at symlinks of just those packages).
set -euo pipefail
VENV=${1:-/work/venvs/lerobot}
MAIN=${MAIN_VENV:-/work/main/.venv}
apt-get install -y -q libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8
python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q lerobot-dataset==0.4.4 pillow sympy networkx jinja2 filelock  # + torch's own deps
"$VENV/bin/pip" install -q --no-deps torchcodec==0.17.0
"$VENV/bin/pip" uninstall -y -q torch torchvision 2>/dev/null || true
SITE_MAIN=$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$VENV/main_torch"
for d in "$SITE_MAIN"/torch "$SITE_MAIN"/torchvision "$SITE_MAIN"/torchvision.libs "$SITE_MAIN"/torchgen \
         "$SITE_MAIN"/functorch "$SITE_MAIN"/nvidia "$SITE_MAIN"/triton "$SITE_MAIN"/torch-*.dist-info \
         "$SITE_MAIN"/torchvision-*.dist-info; do
  [ -e "$d" ] && ln -sfn "$d" "$VENV/main_torch/$(basename "$d")"
done
echo "$VENV/main_torch" > "$SITE/main_torch.pth"
"$VENV/bin/python" -c 'import torch, torchcodec, ledataset.datasets.lerobot_dataset; print("lerobot venv ok", torch.__version__)'
