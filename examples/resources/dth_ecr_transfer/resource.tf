# Mirror two images from Docker Hub into ECR every night, and every tag of a third; only tags whose digest
# changed are copied, and the images keep their digests.
resource "dth_ecr_transfer" "example" {
  name = "mirror"

  source {
    type                   = "registry"
    registry               = "registry-1.docker.io"
    images                 = ["library/nginx:1.27", "library/redis:7.4", "library/alpine:ALL_TAGS"]
    platforms              = ["linux/arm64", "linux/amd64"]
    credentials_secret_arn = "arn:aws:secretsmanager:us-west-2:123456789012:secret:dth/dockerhub"
  }

  destination {
    prefix = "dockerhub"
  }

  schedule = "0 2 * * *"

  fleet {
    max   = 4
    image = "123456789012.dkr.ecr.us-west-2.amazonaws.com/dth:0.1.0"
  }

  alarm_email = "ops@example.com"
}
