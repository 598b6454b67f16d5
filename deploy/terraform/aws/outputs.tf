output "api_url" {
  description = "Load balancer address of the API (create a DNS name matching the certificate that points here)."
  value       = "https://${module.ecs.alb_dns_name}"
}

output "alb_dns_name" {
  description = "DNS name of the load balancer."
  value       = module.ecs.alb_dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the load balancer, for a Route 53 alias record."
  value       = module.ecs.alb_zone_id
}

output "ecr_repository_url" {
  description = "Where CI pushes the image."
  value       = module.registry.repository_url
}

output "ecs_cluster_name" {
  description = "ECS cluster."
  value       = module.ecs.cluster_name
}

output "ecs_services" {
  description = "ECS services."
  value       = { api = module.ecs.api_service_name, worker = module.ecs.worker_service_name }
}

output "service_log_groups" {
  description = "CloudWatch log group of each service."
  value       = module.ecs.log_group_names
}

output "worker_pool_endpoint" {
  description = "Worker pool address inside the VPC (--environment_type=EXTERNAL --environment_config=...)."
  value       = module.ecs.worker_pool_endpoint
}

output "output_bucket" {
  description = "Bucket of run output and dead-letter records."
  value       = module.storage.output_bucket_name
}

output "artifacts_bucket" {
  description = "Bucket of artefacts and pipeline templates."
  value       = module.storage.artifacts_bucket_name
}

output "logs_bucket" {
  description = "Bucket of S3 and load balancer access logs."
  value       = module.storage.logs_bucket_name
}

output "state_url" {
  description = "State store URL the services use (no password: PGPASSWORD comes from the RDS-managed secret)."
  value       = local.state_url
}

output "database_master_secret_arn" {
  description = "RDS-managed secret of the database master password."
  value       = module.database.master_user_secret_arn
}

output "secret_names" {
  description = "Secrets to fill before the services start (aws secretsmanager put-secret-value)."
  value       = module.secrets.secret_names
}

output "nat_public_ips" {
  description = "Egress addresses of the tasks (for allow lists at data sources)."
  value       = module.network.nat_public_ips
}

output "ci_push_role_arn" {
  description = "Role for the CI image push (AWS_PUSH_ROLE_ARN repository variable)."
  value       = module.iam.ci_push_role_arn
}

output "ci_plan_role_arn" {
  description = "Role for the CI terraform plan (AWS_PLAN_ROLE_ARN repository variable)."
  value       = module.iam.ci_plan_role_arn
}

output "admin_task" {
  description = "What `aws ecs run-task` needs to run an admin command (python -m beam_etl.api tenants|keys ...) inside the VPC."
  value = {
    cluster         = module.ecs.cluster_name
    task_definition = module.ecs.api_task_definition_family
    subnets         = module.network.private_subnet_ids
    security_group  = module.ecs.api_security_group_id
  }
}
