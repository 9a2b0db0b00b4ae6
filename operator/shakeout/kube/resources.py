"""Resource descriptors: every URL the project sends is built here, each segment quoted.

A name comes from a user's object more often than not (a run's name, a pod's owner, a node
name in a NodeAttack): quoting each segment, and refusing the empty, `.` and `..`
segments that quoting leaves as they are, keeps every request on the resource it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from shakeout.api.common import GROUP, VERSION
from shakeout.kube.errors import Invalid


def segment(value: str) -> str:
    """One path segment, quoted; an empty, `.` or `..` one is refused."""
    if value in ("", ".", ".."):
        raise Invalid(f"refusing the path segment {value!r}")
    return quote(value, safe="")


@dataclass(frozen=True)
class Resource:
    """A kind of object in the API: where its collection and its objects live."""

    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The collection (no name) or one object's URL path; all namespaces if a namespaced
        resource is given no namespace."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if self.namespaced and namespace is not None:
            parts += ["namespaces", segment(namespace)]
        elif not self.namespaced and namespace is not None:
            raise Invalid(f"{self.plural} are not namespaced")
        parts.append(self.plural)
        if name is not None:
            parts.append(segment(name))
        elif subresource is not None:
            raise Invalid("a subresource needs an object name")
        if subresource is not None:
            parts.append(segment(subresource))
        return "/".join(parts)


PODS = Resource("", "v1", "pods")
SERVICES = Resource("", "v1", "services")
SECRETS = Resource("", "v1", "secrets")
CONFIG_MAPS = Resource("", "v1", "configmaps")
EVENTS = Resource("", "v1", "events")
NODES = Resource("", "v1", "nodes", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
DEPLOYMENTS = Resource("apps", "v1", "deployments")
STATEFULSETS = Resource("apps", "v1", "statefulsets")
REPLICASETS = Resource("apps", "v1", "replicasets")
DAEMONSETS = Resource("apps", "v1", "daemonsets")
JOBS = Resource("batch", "v1", "jobs")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
SUBJECT_ACCESS_REVIEWS = Resource(
    "authorization.k8s.io", "v1", "subjectaccessreviews", namespaced=False
)
SELF_SUBJECT_REVIEWS = Resource(
    "authentication.k8s.io", "v1", "selfsubjectreviews", namespaced=False
)

EXPERIMENTS = Resource(GROUP, VERSION, "experiments")
RUNS = Resource(GROUP, VERSION, "experimentruns")
SWITCHES = Resource(GROUP, VERSION, "chaosswitches", namespaced=False)
NODE_ATTACKS = Resource(GROUP, VERSION, "nodeattacks")

# The workloads a ScaleWorkload or WorkloadReady check names, by kind.
WORKLOADS = {"Deployment": DEPLOYMENTS, "StatefulSet": STATEFULSETS}
# Controllers whose selector must keep matching their pods (or they would replace them).
POD_OWNERS = {
    "ReplicaSet": REPLICASETS,
    "StatefulSet": STATEFULSETS,
    "DaemonSet": DAEMONSETS,
    "Job": JOBS,
}
