"""The researcher's HTTP client for the coordinator API (used by ``radfed query/jobs/result/sites``)."""

from __future__ import annotations

import os

from cdm.errors import EXIT_USAGE, RadfedError

DEFAULT_URL = "http://127.0.0.1:8750"


class ClientError(RadfedError, RuntimeError):
    """The coordinator refused the call or cannot be reached; the message says why."""

    exit_code = EXIT_USAGE  # what every radfed command has exited with on it


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 660.0):
        self.url = (url or os.environ.get("RADFED_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("RADFED_TOKEN")
        import httpx  # here, not at the top: `radfed --help` and the operator's commands never pay for it

        self.http = httpx.Client(base_url=self.url, timeout=timeout,
                                 headers={"Authorization": f"Bearer {self.token}"} if self.token else {})

    def _call(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the coordinator at {self.url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:200]}
        if response.status_code >= 400:
            raise ClientError(f"coordinator refused ({response.status_code}): {body.get('detail', body)}")
        return body

    def health(self) -> dict:
        return self._call("GET", "/v1/health")

    def sites(self) -> list[dict]:
        return self._call("GET", "/v1/sites")["sites"]

    def submit(self, spec: dict, sites=None, quorum=None, timeout=None, wait: float = 0.0, hold_offline=None) -> dict:
        body = {"spec": spec, "sites": sites, "quorum": quorum, "timeout": timeout, "wait": wait,
                "hold_offline": hold_offline}
        return self._call("POST", "/v1/jobs", json={k: v for k, v in body.items() if v is not None})

    def job(self, job_id: str, wait: float = 0.0) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}", params={"wait": wait})

    def jobs(self, all_: bool = False, limit: int = 50) -> list[dict]:
        return self._call("GET", "/v1/jobs", params={"all": all_, "limit": limit})["jobs"]

    def run(self, spec: dict, sites=None, quorum=None, timeout=None, wait: float = 600.0, hold_offline=None) -> dict:
        """Submit and wait for the finished job."""
        job = self.submit(spec, sites, quorum, timeout, wait=min(wait, 600.0), hold_offline=hold_offline)
        while job["status"] in ("queued", "running"):
            job = self.job(job["job_id"], wait=30.0)
        return job

    def plan(self, spec: dict, sites=None, timeout: float = 10.0) -> dict:
        """The dry run: what each site would run for ``spec`` and whether its policy allows it."""
        body = {"spec": spec, "sites": sites, "timeout": timeout}
        return self._call("POST", "/v1/specs/plan", json={k: v for k, v in body.items() if v is not None})

    def close(self) -> None:
        self.http.close()
