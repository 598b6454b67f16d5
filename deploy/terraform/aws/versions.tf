terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.70"
    }
  }

  # Partial configuration: bucket, key, region and use_lockfile come from a file passed at init,
  #   terraform init -backend-config=examples/backend.hcl
  # (see examples/backend.hcl.example). `terraform init -backend=false` skips it for validate.
  backend "s3" {}
}
