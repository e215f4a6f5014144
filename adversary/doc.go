// Package adversary attacks real ClusterKit processes the way someone who
// can reach their ports would, and checks that every attack is refused
// with nothing changed: every copy of every partition has the digest it
// had before, and every acknowledged key its value. The fault-injection
// suite (package nemesis) proves the guarantees under crashes, pauses and
// partitions; this one proves them against callers who are not members,
// not admins, or not patient.
//
// The attacks:
//   - node-to-node calls on the client ports, forged with current epochs;
//   - the internal port without the key, with another key, with another
//     cluster name, with a replayed recording of a member's handshake,
//     with garbage, and held open by silent connections;
//   - strangers that try to join: no key, another key, another name;
//   - management changes without a token, with a non-admin token, and
//     from beyond loopback without ADMIN_TOKEN;
//   - slow and never-ending bodies, idle connections, huge headers;
//   - a browser page: cross-site forms and text/plain posts (CSRF), and
//     its own DNS name pointed at the node (DNS rebinding).
//
// Key rotation is tested here too, since it is the one change to who is
// a member.
package adversary
