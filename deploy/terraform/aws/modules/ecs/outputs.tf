output "cluster_name" {
  description = "ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "api_service_name" {
  description = "ECS service of the API."
  value       = aws_ecs_service.api.name
}

output "worker_service_name" {
  description = "ECS service of the worker pool."
  value       = aws_ecs_service.worker.name
}

output "alb_dns_name" {
  description = "DNS name of the load balancer (point the API's DNS record at it)."
  value       = aws_lb.api.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the load balancer (for a Route 53 alias record)."
  value       = aws_lb.api.zone_id
}

output "log_group_arns" {
  description = "Log groups of the services (the execution role writes to these)."
  value       = [for g in aws_cloudwatch_log_group.service : g.arn]
}

output "log_group_names" {
  description = "Log group of each service."
  value       = { for k, g in aws_cloudwatch_log_group.service : k => g.name }
}

output "api_security_group_id" {
  description = "Security group of the API tasks."
  value       = aws_security_group.api.id
}

output "worker_security_group_id" {
  description = "Security group of the worker pool tasks."
  value       = aws_security_group.worker.id
}

output "worker_pool_endpoint" {
  description = "Address of the worker pool inside the VPC (--environment_config for EXTERNAL environments)."
  value       = "${local.worker_host}:${local.worker_port}"
}

output "api_task_definition_family" {
  description = "Task definition family of the API (for one-off admin tasks: aws ecs run-task)."
  value       = aws_ecs_task_definition.api.family
}
