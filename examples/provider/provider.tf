terraform {
  required_providers {
    dth = {
      source  = "registry.terraform.io/dth/dth"
      version = "~> 0.1"
    }
  }
}

# Credentials come from the standard AWS chain: environment variables, the shared config and credentials files
# (`profile`), or the instance role.
provider "dth" {
  region = "us-west-2"

  # Optional: reach some services through VPC (or FIPS) endpoints. The transfer's instances use them too.
  endpoints {
    sqs = "https://vpce-0a1b2c3d4e5f60789-abcdefgh.sqs.us-west-2.vpce.amazonaws.com"
  }

  default_tags = {
    project = "data-migration"
  }
}
