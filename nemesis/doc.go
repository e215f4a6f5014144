// Package nemesis is ClusterKit's fault-injection test suite. It has no
// library code: everything is in its tests.
//
// Each scenario starts a real cluster of 3 or 5 nodes as OS processes
// (internal/testcluster), runs concurrent clients on a few keys that record
// every operation (internal/history), injects one kind of fault while they
// run — SIGKILL, SIGSTOP/SIGCONT, network cuts, a node joining or leaving,
// a crash right after acknowledged writes — heals everything and then
// checks:
//
//   - linearizability of every key's history with porcupine (a checker
//     timeout counts as a failure; the HTML visualisation is saved);
//   - no acknowledged write lost (the final read of each key shows the last
//     acknowledged write or a later one);
//   - a final write to every key succeeds within 10 s of healing;
//   - the cluster converges (every node active, every partition fully in
//     sync, all nodes agree on the table), and every in-sync copy of every
//     partition is identical to its primary's (digests asked over the
//     internal port, as a member).
//
// Most scenarios run the register workload above (sets, deletes, gets).
// Those named cas-* run the CAS load instead: clients increment shared
// counters by read-modify-write with if_revision; after healing each
// counter must count every acknowledged increment and at most those plus
// the ones with an unknown outcome (no lost update, no double apply), and
// the history must be linearizable under history.RevisionModel (revisions
// strictly increase, a failed condition really did not hold). Those named
// ttl-* run the TTL load: keys set with 2-4 s TTLs and read all the time
// through random nodes with both consistencies; history.CheckTTL checks
// that no read returns a value after its deadline (plus 50 ms) and that no
// linearizable read misses a live one. Those named batch-* run the batch
// load: bank transfers between accounts of one partition, each an atomic
// batch conditional on the revisions an atomic snapshot showed, beside
// plain batches of independent sets and gets; every atomic batch must be
// all or nothing (history.CheckBatches), every snapshot through every
// node must add up to the total, and the final balances must be every
// acknowledged transfer plus some subset of those with an unknown outcome
// (history.CheckBank); every op of every batch is checked per key under
// history.RevisionModel too. Those named lock-* run the lock load:
// clients take locks with a set if_revision=0 and give them back with a
// delete if_revision=R (their own acquire's revision), breaking a lock
// stuck at one revision for 500 ms the same way; the history must be
// linearizable under history.RevisionModel and no lock granted twice
// (between two acknowledged acquires, a delete of the first one's
// revision deleted it or may have).
//
// Those named scan-* run the scan load: the register workload on 24 keys
// that are created and deleted all the time (as many deletes as sets),
// beside scanners that read the keys' range page by page (limits of 2-5,
// every page through another random node, mostly linearizable);
// history.CheckScans checks that a linearizable scan returns every key
// that existed all through it and none deleted before it began (and not
// written again), nothing twice, out of order, outside the range, older
// than a write acknowledged before it, or that no set wrote.
//
// Every run, whatever its load, has three watchers (GET /kv/watch): two of
// the run's key prefix, one of every key, each from a token taken before
// the workload starts (a scan's, or the first event of since=now), each
// reconnecting through another node whenever its stream ends, errs or
// stalls, and on purpose every 2-4 s, with the id of the last event it
// processed. Once the cluster has converged and the load's last reads are
// done, each must show the last change of every key; then
// history.CheckWatches checks that every acknowledged write is in every
// stream exactly once with its revision and value, that every change is a
// write that was attempted and not refused (at most once for an unknown
// outcome) or an expiry not before its deadline, in revision order per key
// and per partition, the same in every stream, ending in the state the
// last reads show, and that no stream was ever cut or asked to resync.
//
// The nodes run with FAILOVER_GRACE=1s (failover 1 s after gossip declares
// a node dead) and REQUEST_TIMEOUT=2s (below the clients' 3 s timeout), and
// every node, node-1 included, lists the others in JOIN_ADDR, as
// deploy/docker-compose.yml does (-nemesis.readme-join starts node-1 as the
// README's quick start does, without one; TestRestartBootstrapNodeREADME
// covers that setting on its own).
//
// Network cuts need network namespaces (root, ip, nft): every node then
// runs in its own namespace on a private bridge, and links are cut with
// nftables rules inside the namespaces. Without them the cut scenarios are
// skipped with a loud message and the others run on loopback.
//
// Running:
//
//	go test -race -count=1 ./nemesis/                 # short pass (CI)
//	go test -count=1 -timeout 0 ./nemesis/ -nemesis.soak   # soak (or CLUSTERKIT_SOAK=1)
//	go test -count=1 ./nemesis/ -run 'TestNemesis/n3/kill-leader$' -nemesis.seed=42 -v
//	go test -race -count=1 ./nemesis/ -run 'TestNemesis/n./(cas|ttl|batch|scan|lock)-' -v  # the CAS, TTL, batch, scan and lock loads
//
// See nemesis_test.go for every flag. On failure the history (with every
// scan and every watcher's events and connections), the visualisation,
// the node logs and a summary are kept in a directory named in the
// failure message (under $CLUSTERKIT_ARTIFACTS if it is set).
package nemesis
