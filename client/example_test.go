package client_test

import (
	"context"
	"fmt"
	"time"

	"github.com/clusterkit/clusterkit/client"
)

// addr is the management address of a running node (here: the one-node
// cluster the tests start).
func addr() string { return client.ExampleNodeAddr }

func ExampleNew() {
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Addrs: []string{addr()}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	if _, err := c.Set(ctx, "user:123", "John Doe", nil); err != nil {
		fmt.Println(err)
		return
	}
	kv, err := c.Get(ctx, "user:123", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(kv.Key, "=", kv.Value)

	_, err = c.Get(ctx, "user:absent", nil)
	fmt.Println("absent:", client.IsNotFound(err))
	// Output:
	// user:123 = John Doe
	// absent: true
}

func ExampleClient_Set_conditions() {
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Addrs: []string{addr()}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	// IfAbsent: create only. The second create fails its condition.
	first, err := c.Set(ctx, "lock:report", "worker-1", &client.SetOptions{IfAbsent: true, TTL: time.Minute})
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = c.Set(ctx, "lock:report", "worker-2", &client.SetOptions{IfAbsent: true})
	fmt.Println("second create refused:", client.IsConditionFailed(err))

	// IfRevision: compare-and-set on the revision the first write returned.
	_, err = c.Set(ctx, "lock:report", "worker-1 (renewed)", &client.SetOptions{IfRevision: client.Rev(first.Revision), KeepTTL: true})
	fmt.Println("renewed:", err == nil)
	kv, _ := c.Get(ctx, "lock:report", nil)
	fmt.Println(kv.Value, "has a TTL:", !kv.ExpiresAt.IsZero())
	// Output:
	// second create refused: true
	// renewed: true
	// worker-1 (renewed) has a TTL: true
}

func ExampleClient_ScanAll() {
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Addrs: []string{addr()}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	ops := []client.Op{}
	for _, k := range []string{"fruit:apple", "fruit:banana", "fruit:cherry"} {
		ops = append(ops, client.Op{Op: "set", Key: k, Value: "ripe"})
	}
	if _, err := c.Batch(ctx, ops, nil); err != nil {
		fmt.Println(err)
		return
	}
	// Pages of two: ScanAll follows next_cursor until the range ends.
	_, err = c.ScanAll(ctx, client.ScanOptions{Prefix: "fruit:", Limit: 2, Values: true}, func(kv client.KV) error {
		fmt.Println(kv.Key, kv.Value)
		return nil
	})
	if err != nil {
		fmt.Println(err)
	}
	// Output:
	// fruit:apple ripe
	// fruit:banana ripe
	// fruit:cherry ripe
}

func ExampleClient_Watch() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, client.Config{Addrs: []string{addr()}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	w, err := c.Watch(ctx, client.WatchOptions{Prefix: "order:"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer w.Close()
	if _, err := c.Set(ctx, "order:1", "placed", nil); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := c.Delete(ctx, "order:1", nil); err != nil {
		fmt.Println(err)
		return
	}
	for seen := 0; seen < 2; {
		ev, err := w.Next(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		if ev.Type == "progress" {
			continue // the stream's position, with no change
		}
		fmt.Println(ev.Type, ev.Key, ev.Value)
		seen++
	}
	// Output:
	// set order:1 placed
	// delete order:1
}
