terraform {
  required_version = ">= 1.3"

  required_providers {
    dth = {
      source  = "registry.terraform.io/dth/dth"
      version = ">= 0.1.0"
    }
  }
}
