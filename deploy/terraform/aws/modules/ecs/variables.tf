variable "name" {
  description = "Name prefix of every resource (cluster, services' families, load balancer)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the services."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of an internet-facing load balancer."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Subnets of the tasks (and of an internal load balancer)."
  type        = list(string)
}

variable "alb_internal" {
  description = "Internal load balancer (reachable from the VPC and peered networks only) instead of internet-facing."
  type        = bool
  default     = false
}

variable "alb_ingress_cidrs" {
  description = "IPv4 ranges allowed to reach the load balancer on 443 (and 80, which only redirects)."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener."
  type        = string
}

variable "tls_policy" {
  description = "TLS security policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "alb_deletion_protection" {
  description = "Refuse to delete the load balancer until this is turned off."
  type        = bool
  default     = true
}

variable "alb_log_bucket" {
  description = "Bucket of the load balancer's access logs."
  type        = string
}

variable "alb_log_prefix" {
  description = "Key prefix of the load balancer's access logs."
  type        = string
}

variable "waf_rate_limit" {
  description = "Requests per 5 minutes from one IP address before WAF blocks it."
  type        = number
  default     = 2000
}

variable "health_check_path" {
  description = "Unauthenticated path the load balancer and the container health check request (expects 200)."
  type        = string
  default     = "/health"
}

variable "image_repository_url" {
  description = "ECR repository URL of the beam_etl image."
  type        = string
}

variable "image_tag" {
  description = "Image tag to run (immutable: a git SHA or a release version)."
  type        = string
}

variable "execution_role_arn" {
  description = "ECS task execution role."
  type        = string
}

variable "task_role_arn" {
  description = "ECS task role."
  type        = string
}

variable "logs_kms_key_arn" {
  description = "KMS key of the service, WAF log groups."
  type        = string
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the service and WAF logs."
  type        = number
}

variable "state_url" {
  description = "postgresql:// URL of the state store, without a password (libpq takes PGPASSWORD)."
  type        = string
}

variable "database_security_group_id" {
  description = "Security group of the state store database."
  type        = string
}

variable "database_password_secret_arn" {
  description = "RDS-managed secret whose password key becomes PGPASSWORD."
  type        = string
}

variable "master_key_secret_arn" {
  description = "Secret injected as BEAM_ETL_API_MASTER_KEY."
  type        = string
}

variable "secret_encryption_key_secret_arn" {
  description = "Secret injected as BEAM_ETL_API_SECRET_KEY."
  type        = string
}

variable "output_uri" {
  description = "s3:// URI of run output (given to the containers as BEAM_ETL_OUTPUT_URI)."
  type        = string
}

variable "dlq_uri" {
  description = "s3:// URI of dead-letter records (given to the containers as BEAM_ETL_DLQ_URI)."
  type        = string
}

variable "extra_environment" {
  description = "More plain (non-secret) environment variables for both services."
  type        = map(string)
  default     = {}
}

variable "runner_callback_ports" {
  description = "Ports the SDK harness in the worker pool calls back on in the API task (the runner's control, data and logging services listen on ephemeral ports)."
  type = object({
    from = number
    to   = number
  })
  default = { from = 32768, to = 60999 }
}

variable "api_cpu" {
  description = "CPU units of the API task (1024 = 1 vCPU); its runs execute in this task on DirectRunner or Prism."
  type        = number
  default     = 2048
}

variable "api_memory" {
  description = "Memory of the API task in MiB."
  type        = number
  default     = 8192
}

variable "api_ephemeral_storage_gib" {
  description = "Task storage in GiB for run folders under /data/output (21 to 200)."
  type        = number
  default     = 100
}

variable "api_desired_count" {
  description = "API tasks: 0 (stopped) or 1."
  type        = number
  default     = 1
}

variable "worker_cpu" {
  description = "CPU units of a worker pool task."
  type        = number
  default     = 2048
}

variable "worker_memory" {
  description = "Memory of a worker pool task in MiB."
  type        = number
  default     = 8192
}

variable "worker_desired_count" {
  description = "Worker pool tasks."
  type        = number
  default     = 1
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
