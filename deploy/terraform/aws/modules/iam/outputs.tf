output "execution_role_arn" {
  description = "ECS task execution role."
  value       = aws_iam_role.execution.arn
}

output "task_role_arn" {
  description = "ECS task role (the containers' AWS identity)."
  value       = aws_iam_role.task.arn
}

output "ci_push_role_arn" {
  description = "Role GitHub Actions assumes on main to push images (null without github_repository)."
  value       = try(aws_iam_role.ci["push"].arn, null)
}

output "ci_plan_role_arn" {
  description = "Role GitHub Actions assumes on pull requests to run terraform plan (null without github_repository)."
  value       = try(aws_iam_role.ci["plan"].arn, null)
}
