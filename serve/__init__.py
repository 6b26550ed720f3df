"""What the product serves to people and services: the read API, the status page, the
Redis view's readers, lag, and the typed client of the output topics."""
