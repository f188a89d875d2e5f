"""Worker hosts that share nothing with the API but Redis and a token.

A worker started with REMOTE_CI_API_URL fetches upload archives from the API, ships the job log
to it while the job writes it, and sends the kept artifacts when the job ends, all over HTTP
with an admin token, as GitLab runners and Buildkite agents talk to their coordinator:

  protocol.py     pure: the routes, Content-Range of a log append, artifact paths, the API URL
  api_client.py   the worker's side of the wire (http.client, bounded timeouts)
  log_shipper.py  a thread of the executor that sends the log's new bytes as they are written
  remote_job.py   what an executor does differently for one job when the API is remote
  routes.py       the API's side: admin-only routes that write only the job's own files
  follow.py       the API's follow ends only once a remote job's log is whole here
  digest.py       an upload's size and sha256, recorded when it arrives
  sweeper.py      runs the data dir's retention sweep in `api`, where no supervisor runs

May import: the shared top-level modules (config, errors, events, jobs, timefmt, queue), and the
web, auth and artifacts packages (the API's side builds on the web types and the manifest),
and system (the retention sweep every host runs).
"""
