variable "name" {
  description = "Name prefix of every role."
  type        = string
}

variable "ecr_repository_arn" {
  description = "The one ECR repository the services pull from (and CI pushes to)."
  type        = string
}

variable "log_group_arns" {
  description = "CloudWatch log groups the services write to (ARNs without the trailing :*)."
  type        = list(string)
}

variable "injected_secret_arns" {
  description = "Exact Secrets Manager secret ARNs the execution role injects into containers."
  type        = list(string)
}

variable "secret_kms_key_arns" {
  description = "CMKs of those secrets (decrypt through Secrets Manager only)."
  type        = list(string)
}

variable "output_bucket_arn" {
  description = "Bucket of run output and dead-letter records."
  type        = string
}

variable "output_prefixes" {
  description = "Key prefixes of the output bucket the containers may read and write (each ends with /)."
  type        = list(string)

  validation {
    condition     = length(var.output_prefixes) > 0 && alltrue([for p in var.output_prefixes : endswith(p, "/") && p != "/"])
    error_message = "output_prefixes: at least one prefix, each ending with '/', never the bucket root."
  }
}

variable "artifacts_bucket_arn" {
  description = "Bucket of deploy artefacts and pipeline templates (read only)."
  type        = string
}

variable "artifacts_read_prefix" {
  description = "Key prefix of the artefacts bucket the containers may read (ends with /)."
  type        = string
  default     = "templates/"

  validation {
    condition     = endswith(var.artifacts_read_prefix, "/") && var.artifacts_read_prefix != "/"
    error_message = "artifacts_read_prefix must end with '/' and not be the bucket root."
  }
}

variable "storage_kms_key_arn" {
  description = "CMK of the output and artefacts buckets."
  type        = string
}

variable "github_repository" {
  description = "owner/name of the GitHub repository whose Actions may assume the CI roles; empty: no CI roles."
  type        = string
  default     = ""

  validation {
    condition     = var.github_repository == "" || can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must be owner/name (or empty)."
  }
}

variable "github_oidc_provider_arn" {
  description = "ARN of an existing token.actions.githubusercontent.com OIDC provider in the account; empty: create one."
  type        = string
  default     = ""
}

variable "terraform_state_bucket" {
  description = "Bucket of the Terraform state (for the CI plan role); empty: no state access is granted."
  type        = string
  default     = ""
}

variable "terraform_state_key" {
  description = "Object key of the Terraform state in terraform_state_bucket."
  type        = string
  default     = "beam-etl/terraform.tfstate"
}

variable "tags" {
  description = "Tags for every role."
  type        = map(string)
  default     = {}
}
