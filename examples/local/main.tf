# A whole dth_s3_transfer against the local AWS world (moto server): scripts/demo runs it.
#
# Everything the provider would create in an AWS account is created in moto. moto runs no instances, so the
# demo starts the EC2 stand-in (tests/src/bin/ec2-standin.rs), which boots each Auto Scaling group's
# instances from its launch template: the user data runs, its systemd units pull the image from a local
# registry and run its finder and worker (t4g instances run the arm64 binaries under qemu). The stand-in also
# serves the Auto Scaling API (the lifecycle calls moto lacks), so `autoscaling_endpoint` points there.

terraform {
  required_providers {
    dth = {
      source  = "registry.terraform.io/dth/dth"
      version = "0.1.0"
    }
  }
}

variable "aws_endpoint" {
  type        = string
  description = "URL of the local AWS world (moto server), e.g. http://127.0.0.1:5000."
}

variable "source_bucket" {
  type        = string
  description = "Bucket holding the objects to copy (the demo fills it)."
}

variable "destination_bucket" {
  type        = string
  description = "Bucket the objects go to."
}

variable "autoscaling_endpoint" {
  type        = string
  default     = null
  description = "Auto Scaling API (the EC2 stand-in's, in front of moto); default: aws_endpoint."
}

variable "image" {
  type        = string
  description = "The worker image, e.g. 127.0.0.1:5001/dth@sha256:... (scripts/demo pushes the project's)."
}

variable "instance_type" {
  type        = string
  default     = "t4g.micro"
  description = "Instance type of the finder and workers (t4g: arm64)."
}

variable "workers" {
  type        = number
  default     = 2
  description = "Worker instances (booted by the EC2 stand-in)."
}

provider "dth" {
  region            = "us-east-1"
  s3_use_path_style = true
  endpoints {
    autoscaling    = coalesce(var.autoscaling_endpoint, var.aws_endpoint)
    cloudwatch     = var.aws_endpoint
    dynamodb       = var.aws_endpoint
    ec2            = var.aws_endpoint
    iam            = var.aws_endpoint
    logs           = var.aws_endpoint
    s3             = var.aws_endpoint
    secretsmanager = var.aws_endpoint
    sns            = var.aws_endpoint
    sqs            = var.aws_endpoint
    sts            = var.aws_endpoint
  }
  default_tags = {
    project = "dth-demo"
  }
}

resource "dth_s3_transfer" "demo" {
  name = "demo"

  source {
    bucket   = var.source_bucket
    endpoint = var.aws_endpoint
  }

  destination {
    bucket        = var.destination_bucket
    prefix        = "mirror"
    storage_class = "STANDARD"
  }

  finder {
    depth = 1
  }

  schedule = "once"

  fleet {
    min     = var.workers
    desired = var.workers
    max           = 4
    image         = var.image
    instance_type = var.instance_type
  }

  multipart {
    threshold  = 8388608
    chunk_size = 5242880
  }
}

output "status" {
  value = dth_s3_transfer.demo.status
}

output "objects_done" {
  value = dth_s3_transfer.demo.objects_done
}

output "queue_url" {
  value = dth_s3_transfer.demo.queue_url
}
