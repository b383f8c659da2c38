# One Data Transfer Hub image transfer into ECR with the settings most mirrors need; everything else keeps the
# provider's defaults. For platforms, another account's ECR, rate limits or the finder's parallelism, use the
# dth_ecr_transfer resource directly.

resource "dth_ecr_transfer" "this" {
  name = var.name

  source {
    type                   = var.source_type
    registry               = var.source_registry
    region                 = var.source_region
    images                 = length(var.images) > 0 ? var.images : null
    all                    = length(var.images) == 0
    credentials_secret_arn = var.source_credentials_secret_arn
  }

  destination {
    prefix = var.destination_prefix
  }

  schedule = var.schedule

  fleet {
    max   = var.workers_max
    image = var.image
  }

  alarm_email = var.alarm_email

  # null rather than {}: an imported transfer without tags then plans no change.
  tags = length(var.tags) > 0 ? var.tags : null
}
