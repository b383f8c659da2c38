# A whole dth_ecr_transfer against the local world: scripts/demo runs it next to examples/local.
#
# moto plays ECR's control plane (authorization tokens, repositories) and every other AWS service; it has no
# registry data plane, so the destination's `registry` points at a local docker-registry that accepts ECR's
# `AWS:<token>` login, the way an ECR interface VPC endpoint replaces the public registry host. The EC2 stand-in
# boots the finder and worker instances (t4g: the image's arm64 binaries under qemu), which list the source
# registry, compare digests, create the repositories in moto's ECR and copy the images.

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

variable "autoscaling_endpoint" {
  type        = string
  default     = null
  description = "Auto Scaling API (the EC2 stand-in's, in front of moto); default: aws_endpoint."
}

variable "image" {
  type        = string
  description = "The worker image, e.g. 127.0.0.1:5001/dth@sha256:... (scripts/demo pushes the project's)."
}

variable "name" {
  type        = string
  default     = "images"
  description = "Name of the transfer."
}

variable "source_registry" {
  type        = string
  description = "The registry images come from, e.g. http://127.0.0.1:5002."
}

variable "images" {
  type        = list(string)
  default     = []
  description = "Images to copy (repo:tag, repo:ALL_TAGS); empty: every repository of the source registry."
}

variable "destination_registry" {
  type        = string
  description = "The registry standing in for ECR's data plane (it accepts ECR's AWS:<token> login)."
}

variable "destination_prefix" {
  type        = string
  default     = "mirror"
  description = "Prepended to every repository name at the destination."
}

variable "instance_type" {
  type        = string
  default     = "t4g.micro"
  description = "Instance type of the finder and workers (t4g: arm64)."
}

variable "workers" {
  type        = number
  default     = 1
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
    ecr            = var.aws_endpoint
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

resource "dth_ecr_transfer" "demo" {
  name = var.name

  source {
    type     = "registry"
    registry = var.source_registry
    images   = length(var.images) > 0 ? var.images : null
    all      = length(var.images) == 0
  }

  destination {
    registry = var.destination_registry
    prefix   = var.destination_prefix
  }

  schedule = "once"

  fleet {
    min           = var.workers
    desired       = var.workers
    max           = 4
    image         = var.image
    instance_type = var.instance_type
  }
}

output "status" {
  value = dth_ecr_transfer.demo.status
}

output "images_done" {
  value = dth_ecr_transfer.demo.images_done
}

output "queue_url" {
  value = dth_ecr_transfer.demo.queue_url
}
