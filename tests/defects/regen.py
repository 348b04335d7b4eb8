"""Regenerate tests/defects/*.patch from (file, old, new) edits against the current tree:
run it after the code a defect touches moved (`python tests/defects/regen.py`)."""
import difflib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
D = {}
def defect(name, desc, expose, *edits):
    D[name] = (desc, expose, edits)

defect("rotation-no-reinstall", "cutover: a DEK rotation after the cutover updates the sidecar and the keystore but no longer re-keys the proposer, which keeps sealing with the old DEK.",
 "a rotation after the cutover; I7 (rotation takes effect) sees entries sealed under the older key.",
 ("node/cutover.py", """        self.store.save(sc)  # the sidecar write precedes the installer
        if sc.raft_envelope_cutover_index:
            self._install(sc.raft_envelope_cutover_index, key_id, why="rotate")
""", """        self.store.save(sc)  # the sidecar write precedes the installer
"""))
defect("adopt-snapshot-keeps-active", "cutover: a snapshot installed at run time adopts the keys and C it carries but not its active DEK id.",
 "a follower lagging across a rotation catches up by InstallSnapshot; a later marker looks stale to it (I2), or it leads and seals with an old key.",
 ("node/cutover.py", """        if enc["active"]:
            sc.active_raft_dek = enc["active"]
""", ""))
defect("lease-not-sealed", "replica: the leader's lease entry skips the proposer's sealing (only the barrier is checked).",
 "any leader after the cutover: a cleartext lease above C (I1, I3).",
 ("node/replica.py", """        if self.cut is not None:
            try:
                payload = self.cut.user_proposal(payload, self.cut.barrier)
            except Busy:
                return  # no lease while the barrier is up
        self._propose(payload, None, None)""", """        if self.cut is not None and self.cut.barrier:
            return  # no lease while the barrier is up
        self._propose(payload, None, None)"""))
defect("epoch-not-persisted", "sidecar: the start-up epoch bump computes the next epoch but does not save it.",
 "a node restarted after the cutover seals again with the same (DEK, epoch, counter): nonce reuse (I5).",
 ("node/sidecar.py", """        raise SidecarError(sidecar_path(data_dir), str(e)) from None
    save(data_dir, s, disk)
    return s.local_epoch""", """        raise SidecarError(sidecar_path(data_dir), str(e)) from None
    return s.local_epoch"""))
defect("install-skips-open-image", "replica: a snapshot installed at run time restores its image as it came, without the cutover's open_image (an image above C is sealed).",
 "a follower that catches up by InstallSnapshot after the cutover: it restores ciphertext (a crash, or a state no replica has: I4).",
 ("node/replica.py", """        if self.cut is not None:
            self.cut.adopt_snapshot(cutover, enc, snapshot.meta.index)
            try:
                image = self.cut.open_image(image)
            except Halt as h:
                self._halt(snapshot.meta.index, snapshot.meta.term, h.reason)
                image = b""
        self.kv.restore(image)""", """        if self.cut is not None:
            self.cut.adopt_snapshot(cutover, enc, snapshot.meta.index)
        self.kv.restore(image)"""))
defect("ack-beyond-match", "raft: a follower acknowledges its whole log instead of what the append proved to match.",
 "a follower holding a divergent suffix (a deposed leader's entries) is counted as matching: the leader commits entries a majority does not hold (lost writes, I4).",
 ("node/raft.py", """            self._send(MsgType.APP_RESP, m.src, index=last_new, read_seq=m.read_seq)""", """            self._send(MsgType.APP_RESP, m.src, index=self.last_index, read_seq=m.read_seq)"""))
defect("vote-log-check-or", "raft: the up-to-date check of a vote request uses `or` where it needs `and` (a longer log of an older term wins).",
 "an election where a candidate with a stale but longer log asks for votes: it can win and overwrite committed entries (lost writes, panics).",
 ("node/raft.py", """        up_to_date = m.log_term > self.last_term or (
            m.log_term == self.last_term and m.index >= self.last_index
        )""", """        up_to_date = m.log_term > self.last_term or (
            m.log_term == self.last_term or m.index >= self.last_index
        )"""))
defect("follower-commit-unbounded", "raft: a follower advances its commit index to the leader's, not to the end of what the append proved.",
 "a follower with a divergent suffix applies entries that were never committed (I4 by replay, lost writes).",
 ("node/raft.py", """            self._commit_to(min(m.commit, last_new))""", """            self._commit_to(min(m.commit, self.last_index))"""))
defect("read-index-no-term-wait", "raft: a new leader answers ReadIndex before it has committed an entry of its own term.",
 "a read served by a freshly elected leader whose commit index still lags: a stale read (linearizability).",
 ("node/raft.py", """        if self._commit < self._term_start:
            self._reads_before_commit.append(bytes(ctx))
            return
        self._start_read(bytes(ctx))""", """        self._start_read(bytes(ctx))"""))
defect("vote-not-synced", "raft: a Ready whose hard state changed only in its vote is not fsynced before the vote is sent.",
 "only a power loss: a node forgets the vote it granted and votes again in the same term (two leaders, lost writes). A SIGKILL keeps the page cache and never shows it.",
 ("node/raft_ready.py", """            or term != phs.term
            or vote != phs.vote  # a vote sent before it is durable can be given twice
        )""", """            or term != phs.term
        )"""))
defect("wal-no-fdatasync", "wal: sync() writes the buffered records out but forgets the fdatasync: the node acknowledges appends (and its clients) before the data is durable.",
 "only a power loss of nodes that hold acknowledged writes (kill-power of a majority or the whole cluster): acknowledged writes are gone (linearizability, I4).",
 ("node/wal.py", """        self._write_out()
        for f in self._dirty:
            f.sync()
        self._dirty.clear()""", """        self._write_out()
        self._dirty.clear()"""))
defect("atomic-write-no-fsync", "disk: write_atomic renames the temp file over the target without fsyncing the temp file's data first.",
 "only a power loss right after a sidecar or snapshot write: the file is durable as empty; the node refuses to start (crashes) or loses its cutover state.",
 ("node/disk.py", """    try:
        f.write(data)
        f.sync()
    finally:
        f.close()""", """    try:
        f.write(data)
    finally:
        f.close()"""))
defect("step-down-fails-pending", "replica: a leader that steps down answers its pending writes `not-leader` (a definite failure), although they may still commit under the next leader.",
 "a leader deposed with writes in flight that the new leader commits: a `fail` op whose value is then read (linearizability).",
 ("node/replica.py", """        if role[0] is not Role.LEADER:
            # Reads waiting for a leadership confirmation will never get it here.""", """        if role[0] is not Role.LEADER:
            for pid, (ident, rid, _i, _d, _adm) in list(self.pending.items()):
                del self.pending[pid]
                self._not_leader(ident, rid)
            # Reads waiting for a leadership confirmation will never get it here."""))
defect("heartbeat-commit-unbounded", "raft: a heartbeat carries the leader's whole commit index instead of what that follower is known to match.",
 "a follower holding a divergent suffix (a deposed leader's entries) hears a heartbeat before its suffix is overwritten: it commits and applies entries nobody committed (I4, panics).",
 ("node/raft.py", """            pr = self._prs[p]
            commit = min(pr.match, self._commit)""", """            pr = self._prs[p]
            commit = self._commit"""))
defect("kv-restore-merges", "kv: restoring a snapshot image merges it into the current map instead of replacing it.",
 "none with this workload: it never deletes a key and writes every key early, so a merged image equals a replaced one. Listed as unexposable (a delete op would expose it).",
 ("node/kv.py", """        self.data = dict(msgpack.unpackb(blob, raw=False)) if blob else {}""", """        self.data.update(dict(msgpack.unpackb(blob, raw=False)) if blob else {})"""))

defect("admin-ignores-stuck-barrier", "cutover: the admin proposer (rotate-DEK, bootstrap) ignores a barrier that a failed EnableRaftEnvelope left up.",
 "EnableRaftEnvelope times out with its marker uncommitted (a partition), the operator rotates on the same leader, both commit: a cleartext rotate entry above C halts every replica (I1).",
 ("node/cutover.py", """        if self.barrier:
            raise Busy("cutover-in-progress",
                       "a failed EnableRaftEnvelope left the barrier up: its marker may "
                       "still commit; restart this node first")
""", ""))

out_dir = os.path.join(ROOT, "tests", "defects")
for name, (desc, expose, edits) in D.items():
    by_file = {}
    for path, old, new in edits:
        by_file.setdefault(path, []).append((old, new))
    chunks = []
    for path, reps in by_file.items():
        src = open(os.path.join(ROOT, path)).read()
        dst = src
        for old, new in reps:
            if dst.count(old) != 1:
                sys.exit(f"{name}: {path}: pattern found {dst.count(old)} times")
            dst = dst.replace(old, new)
        diff = difflib.unified_diff(src.splitlines(True), dst.splitlines(True), f"a/{path}", f"b/{path}", n=3)
        chunks.append(f"diff --git a/{path} b/{path}\n" + "".join(diff))
    head = f"Defect: {name}\nWhat: {desc}\nExposed by: {expose}\n\n"
    open(os.path.join(out_dir, f"{name}.patch"), "w").write(head + "".join(chunks))
print(len(D), "patches")
