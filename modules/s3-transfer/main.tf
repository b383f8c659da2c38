# One Data Transfer Hub S3 transfer with the settings most transfers need; everything else keeps the provider's
# defaults. For filters, prefix lists, event notifications, multipart sizes or the finder's parallelism, use the
# dth_s3_transfer resource directly.

resource "dth_s3_transfer" "this" {
  name = var.name

  source {
    type                   = var.source_type
    bucket                 = var.source_bucket
    prefix                 = var.source_prefix
    region                 = var.source_region
    endpoint               = var.source_endpoint
    credentials_secret_arn = var.source_credentials_secret_arn
  }

  destination {
    bucket        = var.destination_bucket
    prefix        = var.destination_prefix
    storage_class = var.destination_storage_class
  }

  schedule = var.schedule

  fleet {
    min                = var.workers_min
    desired            = var.workers_desired
    max                = var.workers_max
    worker_concurrency = var.worker_concurrency
    image              = var.image
  }

  alarm_email = var.alarm_email

  # null rather than {}: an imported transfer without tags then plans no change.
  tags = length(var.tags) > 0 ? var.tags : null
}
