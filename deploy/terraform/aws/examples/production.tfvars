# Example values for a production deployment: copy, edit, and pass with
#   terraform plan -var-file=examples/production.tfvars -var image_tag=<git sha>
aws_region  = "eu-west-1"
name        = "beam-etl"
environment = "prod"

vpc_cidr           = "10.40.0.0/16"
availability_zones = ["eu-west-1a", "eu-west-1b"]
single_nat_gateway = false

certificate_arn   = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
alb_internal      = false
alb_ingress_cidrs = ["203.0.113.0/24", "198.51.100.0/24"] # office and VPN ranges (documentation addresses)

ecr_repository_name = "beam-etl"
image_tag           = "0123456789abcdef0123456789abcdef01234567"

api_cpu                   = 2048
api_memory                = 8192
api_ephemeral_storage_gib = 100
api_desired_count         = 1
worker_cpu                = 2048
worker_memory             = 8192
worker_desired_count      = 2

db_instance_class        = "db.t4g.medium"
db_multi_az              = true
db_backup_retention_days = 14
db_deletion_protection   = true

log_retention_days     = 365
output_expiration_days = 400
dlq_expiration_days    = 730

github_repository      = "example-org/beam_etl"
terraform_state_bucket = "example-org-terraform-state"
terraform_state_key    = "beam-etl/prod/terraform.tfstate"

tags = {
  CostCenter = "data-platform"
}
