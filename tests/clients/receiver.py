"""A receiving SMTP server for tests/clients/run.sh: aiosmtpd on loopback, every accepted
message written to OUTDIR as N.eml (the DATA bytes exactly as received, dot-unstuffed) and
N.json (MAIL FROM, RCPT TO, MAIL parameters), each through a temp file and a rename.

    python receiver.py HOST PORT OUTDIR
"""

import asyncio
import itertools
import json
import os
import signal
import sys

from aiosmtpd.controller import Controller


class Store:
    def __init__(self, outdir):
        self.outdir = outdir
        self.counter = itertools.count(1)

    def _write(self, name, data):
        tmp = os.path.join(self.outdir, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.outdir, name))

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
        }
        # The .eml first: run.sh waits for the .json, so both are complete then.
        self._write(f"{n}.eml", envelope.original_content)
        self._write(f"{n}.json", json.dumps(meta).encode())
        return "250 2.0.0 Ok: stored"


def main():
    host, port, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # 8BITMIME and SMTPUTF8 offered, no size limit below submitd's.
    controller = Controller(
        Store(outdir),
        hostname=host,
        port=port,
        decode_data=False,
        enable_SMTPUTF8=True,
        data_size_limit=64 * 1024 * 1024,
    )
    controller.start()
    print(f"receiver listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    main()
