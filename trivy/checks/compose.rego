# METADATA
# title: A compose service gets none of the host's privileges
# description: |
#   Privileged mode, the host's network, PID or IPC namespace, or the Docker socket hand a
#   container the host. Trivy has no built-in checks for compose files; scripts/scan-config
#   applies this one to docker-compose.yml and docker-compose.prod.yml.
# scope: package
# schemas:
#   - input: schema["yaml"]
# custom:
#   id: COMPOSE-0001
#   avd_id: COMPOSE-0001
#   severity: HIGH
#   short_code: no-host-privileges
#   recommended_action: Drop the option; what needs the host runs on the host, not in a container.
#   input:
#     selector:
#       - type: yaml
package user.compose.no_host_privileges

import rego.v1

host_namespaces := {"network_mode", "pid", "ipc", "userns_mode", "uts"}

deny contains res if {
	some name, service in input.services
	service.privileged == true
	res := result.new(sprintf("service %s runs privileged", [name]), service)
}

deny contains res if {
	some name, service in input.services
	some key in host_namespaces
	service[key] == "host"
	res := result.new(sprintf("service %s shares the host's %s", [name, key]), service)
}

deny contains res if {
	some name, service in input.services
	some volume in service.volumes
	contains(volume_source(volume), "docker.sock")
	res := result.new(sprintf("service %s mounts the Docker socket", [name]), service)
}

volume_source(volume) := split(volume, ":")[0] if is_string(volume)

volume_source(volume) := object.get(volume, "source", "") if is_object(volume)
