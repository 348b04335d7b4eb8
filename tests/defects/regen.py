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
 ("node/replica.py", """        image = snapshot_kv(snapshot.data)
        if self.cut is not None:
            try:
                image = self.cut.open_image(image)
            except Halt as h:
                self._halt(snapshot.meta.index, snapshot.meta.term, h.reason)
                image = b""
        self.kv.restore(image)""", """        image = snapshot_kv(snapshot.data)
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
 ("node/wal.py", """        for f in self._dirty:
            if bg.on:
                bg.hit("wal.written")
            f.sync()
            if bg.on:
                bg.hit("wal.synced")
        self._dirty.clear()""", """        for f in self._dirty:
            if bg.on:
                bg.hit("wal.written")
            if bg.on:
                bg.hit("wal.synced")
        self._dirty.clear()"""))
defect("atomic-write-no-fsync", "disk: write_atomic renames the temp file over the target without fsyncing the temp file's data first.",
 "only a power loss right after a sidecar or snapshot write: the file is durable as empty; the node refuses to start (crashes) or loses its cutover state.",
 ("node/disk.py", """        if bg.on:
            bg.hit("file.written")
        f.sync()
        if bg.on:
            bg.hit("file.synced")
    finally:""", """        if bg.on:
            bg.hit("file.written")
        if bg.on:
            bg.hit("file.synced")
    finally:"""))
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

# ---- issue 20, part 7: the cutover logic, the Raft core, storage recovery, the client

defect("startup-guard-trusts-lagging-sidecar", "cutover: the start-up divergence guard only refuses two different non-zero Cs: a snapshot header that says C beside a sidecar that says 0 is taken for a sidecar that will catch up from the log.",
 "a lost write (storage faults) drops the sidecar update that adopted C from an InstallSnapshot while the snapshot file lands; the node restarts with C = 0 under a snapshot above C, never replays the marker, applies the sealed entries after it unopened (halt, I2) or leads and proposes cleartext above C (I1).",
 ("node/cutover.py", """        if header_cutover and header_cutover != c:""", """        if header_cutover and c and header_cutover != c:"""))
defect("enable-trusts-own-marker", "cutover: EnableRaftEnvelope, once its marker applied, installs C = the marker's index instead of reading C back from the sidecar, so a marker the applier judged stale still cuts the leader over.",
 "a RotateDEK that commits between the marker's proposal and its apply (reachable once the rotation's own proposal expired uncommitted on that leader, freeing the admin lock): every replica keeps C = 0, the leader alone seals above the marker, the others apply ciphertext (halt I3, I1, I2).",
 ("node/cutover.py", """            c = sc.raft_envelope_cutover_index
            if c == 0:
                return EnableResult("stale", 0, "a DEK rotation raced the marker")
            cut._install(c, sc.active_raft_dek, why="enable-handler")""", """            c = sc.raft_envelope_cutover_index or self.marker_index
            cut._install(c, sc.active_raft_dek, why="enable-handler")"""))
defect("adopt-after-persist", "replica: a snapshot received at run time adopts the encryption state it carries (the sidecar's C and keys) when its image is installed, after the snapshot file is durable, not before it.",
 "catch-up by InstallSnapshot across the cutover interrupted by a restart (snapshot-restart; a kill after the snapshot file's fsync, before the apply): the snapshot says C, the sidecar 0, the start-up guard refuses and the node never starts again (crashes).",
 ("node/replica.py", """        if self.cut is not None:
            self.cut.adopt_snapshot(cutover, enc, snapshot.meta.index)

    def install_snapshot(self, snapshot: Snapshot) -> None:""", """
    def install_snapshot(self, snapshot: Snapshot) -> None:"""),
 ("node/replica.py", """        image = snapshot_kv(snapshot.data)
        if self.cut is not None:
            try:""", """        image = snapshot_kv(snapshot.data)
        if self.cut is not None:
            self.cut.adopt_snapshot(cutover, _enc, snapshot.meta.index)
            try:"""))
defect("snapshot-header-off-by-one", "cutover: a snapshot's header (and its encryption blob) names C only when its index is strictly above C, so a snapshot taken exactly at the marker says C = 0.",
 "a snapshot at index C (the marker is proposed alone behind the barrier, so its Ready often ends there: an automatic snapshot or snapshot-now right after the cutover): I2 sees its header; a lagging follower that installs it never learns C and applies the sealed entries above it unopened (halt, I2).",
 ("node/cutover.py", """        header_cutover = c if c and snapshot_index >= c else 0""", """        header_cutover = c if c and snapshot_index > c else 0"""))
defect("ack-before-persist", "raft_ready: append responses are sorted with the leader's replication traffic, so a follower acknowledges entries before the fsync that makes them durable.",
 "a follower killed between sending its ack and its fsync (a kill mid-turn, BUGGIFY host.sent-unsynced, a power loss): the leader committed an entry that the quorum it counted no longer holds, a later election loses it (lost writes, I4).",
 ("node/raft_ready.py", """_SEND_BEFORE_PERSIST = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP})""", """_SEND_BEFORE_PERSIST = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP, MsgType.APP_RESP})"""))
defect("truncate-keeps-stable", "raft_log: truncating a divergent suffix does not lower the stable index, so the leader's replacement entries at or below it are never handed to storage, yet acknowledged.",
 "a follower holding a deposed leader's uncommitted tail (deposed-tail) that was durable gets it overwritten, acks, and is then restarted: it replays the old tail at committed indexes (I4, a RaftPanic, lost writes).",
 ("node/raft_log.py", """        self.ents.extend(entries)
        self.stable = min(self.stable, first - 1)
""", """        self.ents.extend(entries)
"""))
defect("snapshot-fast-path-ignores-term", "raft: a follower offered a snapshot skips installing it whenever it holds an entry at the snapshot's index, whatever that entry's term, and commits up to it.",
 "a deposed leader whose stale divergent tail reaches past the new leader's compacted index is caught up by InstallSnapshot: it commits and applies its own uncommitted entries in place of the snapshot (I4, lost writes, panics).",
 ("node/raft.py", """        if self._log.term_at(meta.index) == meta.term:""", """        if self._log.term_at(meta.index) is not None:"""))
defect("read-quorum-counts-leader-twice", "raft: a ReadIndex round is released with quorum - 1 passed to read_confirmed, which already counts the leader: the leader and one follower of five (alone, of three) confirm a read.",
 "a leader cut off in a minority with one follower (minority-read, or any partition while clients read through it) keeps answering reads after the majority elected a new leader and wrote: stale reads (linearizability).",
 ("node/raft.py", """            if not read_confirmed((self._prs[p] for p in self._others), seq, self._quorum):""", """            if not read_confirmed((self._prs[p] for p in self._others), seq, self._quorum - 1):"""))
defect("campaign-no-self-vote", "raft: a candidate counts its own vote in the tally but does not record it as its vote (the hard state's vote stays empty), so it may still grant its vote to another candidate of the same term.",
 "a split election (two candidates in one term, after a leader's kill or a partition): one grants the other its vote while counting itself, both win the term (two leaders: election safety, I4, lost writes).",
 ("node/raft.py", """            self._term += 1
            self._vote = self.id
            self._role = Role.CANDIDATE""", """            self._term += 1
            self._role = Role.CANDIDATE"""))
defect("vote-tally-counts-answers", "raft_progress: the vote tally declares an election (or pre-vote) won once a quorum has answered, counting rejections as grants.",
 "any election in which some voter rejects (its log is more up to date, or it voted already): a candidate with a stale log wins and overwrites committed entries (lost writes, I4, panics).",
 ("node/raft_progress.py", """    if granted >= quorum:
        return True""", """    if len(votes) >= quorum:
        return True"""))
defect("torn-tail-not-cut", "wal: recovery reports a torn tail (the event) but no longer truncates it, so the next records are appended behind the garbage.",
 "a power loss that tears a WAL write (BUGGIFY tear, kill-power), a restart that appends, then another restart: the garbage now precedes valid records, recovery takes it for mid-segment corruption and the node never starts again (crashes).",
 ("node/wal.py", """        if torn is not None:
            self._cut_torn_tail(torn)
            if on_torn_tail is not None:""", """        if torn is not None:
            if on_torn_tail is not None:"""))
defect("midsegment-damage-as-torn", "wal: a bad record in the last segment is always taken for a torn tail, without looking for valid records behind it, so damage in the middle of the segment silently drops every record after it.",
 "a bit flip or sector error inside a node's last WAL segment (bitflip, sector-error): instead of refusing to start it comes back with an older log and hard state, forgetting acknowledged entries and its vote (lost writes, two votes in a term).",
 ("node/wal.py", """            if _valid_record_after(buf, off + 1, size):
                raise WalCorruptError(path, off, "bad record followed by valid records")
            return records, TornTail(path, off, size - off)""", """            return records, TornTail(path, off, size - off)"""))
defect("recover-keeps-stale-log", "storage: when the snapshot file outran its WAL marker, recovery drops the WAL's entries only if the one at the snapshot's index has a newer term than the snapshot; an older-term one (a stale uncommitted tail) is kept behind the snapshot.",
 "catch-up by InstallSnapshot interrupted by a restart (snapshot-restart: killed after the snapshot file, before the WAL marker) on a node holding a deposed leader's tail past the snapshot's index: it restarts with stale-term entries after the snapshot and never starts again (crashes), or serves them.",
 ("node/storage.py", """                if entries[s_index - first].term != s_term:""", """                if entries[s_index - first].term > s_term:"""))
defect("timeout-recorded-fail", "client: a write or cas that got no answer within its timeout is recorded `fail` (as if it certainly did not happen) instead of `info`.",
 "a write whose answer is lost or late (its leader killed, paused or cut off after the entry replicated) commits under the next leader: the history says fail and a later read returns its value (linearizability).",
 ("orchestrator/run/invoke.py", """            if not retry_indeterminate:
                return done("info", target, error="timeout", text=text)""", """            if not retry_indeterminate:
                return done("fail", target, error="timeout", text=text)"""))
defect("write-retried-after-timeout", "client: a blind write is taken for idempotent and sent again (elsewhere) after a timeout or an indeterminate answer, so one recorded op may apply twice.",
 "a write that times out on a leader that is then deposed with its entry replicated, resent to the next leader: both copies apply with another client's write between them, and reads see the value come back (linearizability).",
 ("orchestrator/run/invoke.py", """IDEMPOTENT_OPS: frozenset[str] = frozenset({"read"})""", """IDEMPOTENT_OPS: frozenset[str] = frozenset({"read", "write"})"""))

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
