#!/usr/bin/env bash
# dfscan on Google Cloud Dataflow.
#
#   deploy/beam/launch_dataflow.sh build          # worker/launcher image + Flex Template spec
#   deploy/beam/launch_dataflow.sh run [DAY]      # a job from the Flex Template
#   deploy/beam/launch_dataflow.sh direct [DAY]   # no template: `dfscan scan` submits the job
#
# Settings from the environment: PROJECT and BUCKET (required), REGION (us-central1),
# REPOSITORY (dfscan, an Artifact Registry Docker repository), TAG (0.1.0). DAY defaults
# to yesterday (UTC); the scan reads gs://BUCKET/uploads/dt=DAY/ and writes one row per
# video to the BigQuery table PROJECT:dfscan.video_scans (create the dataset first:
# `bq mk --dataset PROJECT:dfscan`). Models are read from gs://BUCKET/models/.
# `direct` needs dfscan installed locally with the same Python (3.11) and apache-beam as
# the image.
set -euo pipefail

: "${PROJECT:?set PROJECT, e.g. PROJECT=my-project}"
: "${BUCKET:?set BUCKET, e.g. BUCKET=my-bucket}"
REGION="${REGION:-us-central1}"
REPOSITORY="${REPOSITORY:-dfscan}"
TAG="${TAG:-0.1.0}"
DAY="${2:-$(date -u -d yesterday +%F)}"

IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/dfscan-beam:${TAG}"
TEMPLATE="gs://${BUCKET}/templates/dfscan-${TAG}.json"
MODEL="gs://${BUCKET}/models/dfscan/resnet18-v1.pt"
DETECTOR="gs://${BUCKET}/models/detectors/scrfd/det_500m.onnx"
WAREHOUSE="bigquery://${PROJECT}/dfscan.video_scans"

# The repository root: the Docker build context, and ./setup.py for --setup_file.
cd "$(dirname "$0")/../.."

build() {
  docker build -f deploy/docker/Dockerfile.cpu --target beam-sdk -t "${IMAGE}" .
  docker push "${IMAGE}"
  gcloud dataflow flex-template build "${TEMPLATE}" \
    --image "${IMAGE}" \
    --sdk-language PYTHON \
    --metadata-file deploy/beam/flex_template_metadata.json \
    --project "${PROJECT}"
}

run() {
  gcloud dataflow flex-template run "dfscan-${DAY}-$(date -u +%H%M%S)" \
    --template-file-gcs-location "${TEMPLATE}" \
    --project "${PROJECT}" \
    --region "${REGION}" \
    --staging-location "gs://${BUCKET}/staging" \
    --temp-location "gs://${BUCKET}/tmp" \
    --worker-machine-type n2-standard-8 \
    --max-workers 20 \
    --parameters "input=gs://${BUCKET}/uploads/dt=${DAY}/" \
    --parameters "out=gs://${BUCKET}/scans/dt=${DAY}/" \
    --parameters "warehouse=${WAREHOUSE}" \
    --parameters "model=${MODEL}" \
    --parameters "detector_model=${DETECTOR}" \
    --parameters "run_id=dataflow-${DAY}" \
    --parameters "sdk_container_image=${IMAGE}" \
    --parameters sdk_location=container
}

direct() {
  dfscan scan "gs://${BUCKET}/uploads/dt=${DAY}/" \
    --out "gs://${BUCKET}/scans/dt=${DAY}/" \
    --warehouse "${WAREHOUSE}" \
    --model "${MODEL}" \
    --detector-model "${DETECTOR}" \
    --run-id "dataflow-${DAY}" \
    --runner beam --no-progress \
    -- --runner=DataflowRunner --project="${PROJECT}" --region="${REGION}" \
    --temp_location="gs://${BUCKET}/tmp" --staging_location="gs://${BUCKET}/staging" \
    --job_name="dfscan-${DAY}" --setup_file=./setup.py \
    --sdk_container_image="${IMAGE}" --sdk_location=container \
    --machine_type=n2-standard-8 --max_num_workers=20
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  direct) direct ;;
  *)
    echo "usage: $0 build | run [YYYY-MM-DD] | direct [YYYY-MM-DD]" >&2
    exit 2
    ;;
esac
