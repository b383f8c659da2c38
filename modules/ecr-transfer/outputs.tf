output "id" {
  description = "The transfer's id (its name)."
  value       = dth_ecr_transfer.this.id
}

output "status" {
  description = "`idle` (nothing run yet), `syncing`, `in_sync` or `failed`, as of the latest refresh."
  value       = dth_ecr_transfer.this.status
}

output "images_pending" {
  description = "Images of the latest run not yet copied, as of the latest refresh."
  value       = dth_ecr_transfer.this.images_found - dth_ecr_transfer.this.images_done - dth_ecr_transfer.this.images_failed - dth_ecr_transfer.this.images_gone
}

output "images_failed" {
  description = "Images of the latest run that failed on their last attempt."
  value       = dth_ecr_transfer.this.images_failed
}

output "dead_letter_queue_url" {
  description = "URL of the SQS dead-letter queue (jobs that failed `max_attempts` times)."
  value       = dth_ecr_transfer.this.dead_letter_queue_url
}

output "worker_asg_name" {
  description = "The workers' Auto Scaling group."
  value       = dth_ecr_transfer.this.worker_asg_name
}
