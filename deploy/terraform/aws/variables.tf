# ---------------------------------------------------------------------------------------------
# Where and what
# ---------------------------------------------------------------------------------------------

variable "aws_region" {
  description = "AWS region of the deployment."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region must be a region name such as eu-west-1."
  }
}

variable "name" {
  description = "Short name of the deployment; resources are named NAME-ENVIRONMENT-..."
  type        = string
  default     = "beam-etl"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}[a-z0-9]$", var.name))
    error_message = "name: 3 to 16 characters, lower-case letters, digits and '-', starting with a letter (load balancer names allow 32 characters in all)."
  }
}

variable "environment" {
  description = "Environment label (prod, staging, ...)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,9}$", var.environment))
    error_message = "environment: 2 to 10 lower-case letters or digits, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource (added to Project, Environment and ManagedBy)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Network and load balancer
# ---------------------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "IPv4 range of the VPC (/16 to /20)."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && can(regex("/(1[6-9]|20)$", var.vpc_cidr))
    error_message = "vpc_cidr must be an IPv4 CIDR block from /16 to /20."
  }
}

variable "availability_zones" {
  description = "2 or 3 availability zones of aws_region (for example [\"eu-west-1a\", \"eu-west-1b\"]); named, so subnets never move when AWS adds a zone."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 3 && alltrue([for z in var.availability_zones : can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$", z))])
    error_message = "availability_zones must name 2 or 3 zones such as eu-west-1a."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones instead of one per zone (cheaper, less available)."
  type        = bool
  default     = false
}

variable "certificate_arn" {
  description = "ACM certificate (same region) of the API's HTTPS listener."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN (arn:aws:acm:REGION:ACCOUNT:certificate/ID)."
  }
}

variable "alb_internal" {
  description = "Internal load balancer (VPC and peered networks only) instead of internet-facing."
  type        = bool
  default     = false
}

variable "alb_ingress_cidrs" {
  description = "IPv4 ranges allowed to reach the API on 443 (80 only redirects). No default: name your networks; [\"0.0.0.0/0\"] opens the API to the internet."
  type        = list(string)

  validation {
    condition     = length(var.alb_ingress_cidrs) > 0 && alltrue([for c in var.alb_ingress_cidrs : can(cidrhost(c, 0)) && strcontains(c, ".")])
    error_message = "alb_ingress_cidrs must list at least one IPv4 CIDR block."
  }
}

variable "alb_deletion_protection" {
  description = "Refuse to delete the load balancer until this is turned off."
  type        = bool
  default     = true
}

variable "waf_rate_limit" {
  description = "Requests per 5 minutes from one IP address before WAF blocks it."
  type        = number
  default     = 2000

  validation {
    condition     = var.waf_rate_limit >= 100 && var.waf_rate_limit <= 2000000000
    error_message = "waf_rate_limit must be between 100 and 2,000,000,000 (the WAF limits)."
  }
}

# ---------------------------------------------------------------------------------------------
# Image and services
# ---------------------------------------------------------------------------------------------

variable "ecr_repository_name" {
  description = "ECR repository of the beam_etl image."
  type        = string
  default     = "beam-etl"
}

variable "image_tag" {
  description = "Tag of the beam_etl image to run: the git SHA CI pushed (tags are immutable)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid, immutable Docker tag (a git SHA or version), not latest."
  }
}

variable "extra_environment" {
  description = "More plain environment variables for the services (never secrets: those go to Secrets Manager)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_environment) : !can(regex("(?i)(password|secret|token|key)", k))])
    error_message = "extra_environment must not carry secrets (names with password, secret, token or key): use Secrets Manager."
  }
}

variable "api_cpu" {
  description = "CPU units of the API task (1024 = 1 vCPU). Pipelines the API starts run inside this task."
  type        = number
  default     = 2048

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.api_cpu)
    error_message = "api_cpu must be a Fargate CPU size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "api_memory" {
  description = "Memory of the API task in MiB (must suit api_cpu under Fargate's table)."
  type        = number
  default     = 8192

  validation {
    condition     = var.api_memory >= 512 && var.api_memory <= 122880
    error_message = "api_memory must be between 512 and 122880 MiB."
  }
}

variable "api_ephemeral_storage_gib" {
  description = "Task storage in GiB for the API's run folders (/data/output)."
  type        = number
  default     = 100

  validation {
    condition     = var.api_ephemeral_storage_gib >= 21 && var.api_ephemeral_storage_gib <= 200
    error_message = "api_ephemeral_storage_gib must be between 21 and 200."
  }
}

variable "api_desired_count" {
  description = "API tasks: 1, or 0 to stop it. One task supervises the runs it started, so more than one would answer stop and status requests for runs another task owns."
  type        = number
  default     = 1

  validation {
    condition     = contains([0, 1], var.api_desired_count)
    error_message = "api_desired_count must be 0 or 1 (runs are supervised by the task that started them)."
  }
}

variable "worker_cpu" {
  description = "CPU units of a worker pool task."
  type        = number
  default     = 2048

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.worker_cpu)
    error_message = "worker_cpu must be a Fargate CPU size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "worker_memory" {
  description = "Memory of a worker pool task in MiB."
  type        = number
  default     = 8192

  validation {
    condition     = var.worker_memory >= 512 && var.worker_memory <= 122880
    error_message = "worker_memory must be between 512 and 122880 MiB."
  }
}

variable "worker_desired_count" {
  description = "Worker pool tasks."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_desired_count >= 0 && var.worker_desired_count <= 50
    error_message = "worker_desired_count must be between 0 and 50."
  }
}

# ---------------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------------

variable "db_engine_version" {
  description = "PostgreSQL version of the state store (a major version lets RDS apply minor upgrades)."
  type        = string
  default     = "16"
}

variable "db_instance_class" {
  description = "RDS instance class of the state store."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_multi_az" {
  description = "Standby in a second zone with automatic failover."
  type        = bool
  default     = true
}

variable "db_allocated_storage_gb" {
  description = "Initial database storage in GiB."
  type        = number
  default     = 50
}

variable "db_max_allocated_storage_gb" {
  description = "Upper bound of database storage autoscaling in GiB."
  type        = number
  default     = 500

  validation {
    condition     = var.db_max_allocated_storage_gb >= 20
    error_message = "db_max_allocated_storage_gb must be at least 20."
  }
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery window), 7 to 35."
  type        = number
  default     = 14
}

variable "db_deletion_protection" {
  description = "Refuse to delete the database until this is turned off."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# Retention and secrets
# ---------------------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Days CloudWatch log groups and the access-log bucket keep logs (one year at least)."
  type        = number
  default     = 365

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch retention of one year or more: 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653."
  }
}

variable "output_expiration_days" {
  description = "Days before run output in S3 expires."
  type        = number
  default     = 400
}

variable "dlq_expiration_days" {
  description = "Days before dead-letter records in S3 expire."
  type        = number
  default     = 730
}

variable "secret_rotation_lambda_arns" {
  description = "Rotation hook: master-key and/or secret-encryption -> ARN of a rotation Lambda function. Empty: no automatic rotation (docs/deploy.md)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# CI (GitHub Actions OIDC roles)
# ---------------------------------------------------------------------------------------------

variable "github_repository" {
  description = "owner/name of the GitHub repository whose workflows push images (main) and plan (pull requests); empty: no CI roles."
  type        = string
  default     = ""
}

variable "github_oidc_provider_arn" {
  description = "Existing GitHub OIDC provider of the account; empty: one is created when github_repository is set."
  type        = string
  default     = ""
}

variable "terraform_state_bucket" {
  description = "Bucket of this configuration's Terraform state, for the CI plan role; empty: none granted."
  type        = string
  default     = ""
}

variable "terraform_state_key" {
  description = "Key of this configuration's Terraform state in terraform_state_bucket."
  type        = string
  default     = "beam-etl/terraform.tfstate"
}
