#!/usr/bin/env bash
# The main job: set up, fetch the published weights and the TF-Hub demo GIFs, index them and
# answer their queries. Without the published weights (offline, dead links): one line says why,
# then the same demo on a small model trained here on generated videos (cached: the next run is
# instant). Your own copy: ./run.sh --weights W.pth --vocab s3d_dict.npy [--videos DIR]
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh search,serve
exec milnce demo "$@"
