"""Scale-out on Ray Serve: the service's app as N replicas on one or many machines (owner: service.cluster.app)."""
