# Copy an Aliyun OSS bucket into S3 every night; new and changed objects only.
resource "dth_s3_transfer" "example" {
  name = "photos"

  source {
    type                   = "Aliyun_OSS"
    bucket                 = "photos"
    region                 = "cn-hangzhou"
    credentials_secret_arn = "arn:aws:secretsmanager:us-west-2:123456789012:secret:dth/oss-keys"
  }

  destination {
    bucket        = "photos-archive"
    prefix        = "from-oss"
    storage_class = "INTELLIGENT_TIERING"
  }

  filters {
    exclude = ["**/*.tmp"]
  }

  schedule = "0 3 * * *"

  fleet {
    min     = 1
    desired = 1
    max     = 10
    image   = "123456789012.dkr.ecr.us-west-2.amazonaws.com/dth:0.1.0"
  }

  # Each worker reads at most 50 MiB/s from OSS.
  worker {
    bandwidth_limit = 52428800
  }

  alarm_email = "data-team@example.com"

  tags = {
    team = "data"
  }

  timeouts {
    create = "1h"
  }
}
