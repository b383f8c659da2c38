# Read a transfer this configuration does not own, by name.
data "dth_transfer" "photos" {
  name = "photos"
}

# Warn on every plan while it is behind or has failures.
check "photos_in_sync" {
  assert {
    condition     = data.dth_transfer.photos.status == "in_sync"
    error_message = "photos is ${data.dth_transfer.photos.status}: ${data.dth_transfer.photos.pending} pending, ${data.dth_transfer.photos.failed} failed, ${data.dth_transfer.photos.dead_letters} dead letters."
  }
}
