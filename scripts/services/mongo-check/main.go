// Command specflow-mongo-check is the readiness check for the local MongoDB
// (FerretDB) started by scripts/services.sh.
//
// It is built by services.sh inside a copy of the FerretDB module source, so
// it uses the MongoDB Go driver version pinned by FerretDB's go.mod and needs
// no extra downloads.
//
// Usage: specflow-mongo-check [-uri URI] [-timeout 10s] [-roundtrip]
//
// Retries until the timeout: a "ping" command on the admin database must be
// answered with ok: 1. With -roundtrip it then also inserts, reads back and
// drops a document in a scratch database (exercising the storage backend).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

func main() {
	uri := flag.String("uri", "mongodb://127.0.0.1:27017", "MongoDB URI")
	timeout := flag.Duration("timeout", 10*time.Second, "give up after this long")
	roundtrip := flag.Bool("roundtrip", false, "also insert/find/drop a document in a scratch database")
	flag.Parse()

	start := time.Now()
	deadline := start.Add(*timeout)

	var lastErr error
	for attempt := 1; ; attempt++ {
		lastErr = check(*uri, *roundtrip, deadline)
		if lastErr == nil {
			what := "answered ping"
			if *roundtrip {
				what = "answered ping and an insert/find/drop round trip"
			}
			fmt.Printf("ok: %s %s (attempt %d, %.1f s)\n", *uri, what, attempt, time.Since(start).Seconds())
			return
		}
		fmt.Fprintf(os.Stderr, "attempt %d failed: %v\n", attempt, lastErr)
		if time.Now().Add(300 * time.Millisecond).After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "mongodb check timed out; last error: %v\n", lastErr)
	os.Exit(1)
}

func check(uri string, roundtrip bool, deadline time.Time) error {
	opTimeout := time.Until(deadline)
	if opTimeout > 5*time.Second {
		opTimeout = 5 * time.Second
	}
	if opTimeout < time.Second {
		opTimeout = time.Second
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()

	opts := options.Client().ApplyURI(uri).
		SetDirect(true).
		SetAppName("specflow-services-check").
		SetConnectTimeout(opTimeout).
		SetServerSelectionTimeout(opTimeout)

	client, err := mongo.Connect(ctx, opts)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer client.Disconnect(context.Background()) //nolint:errcheck // best effort

	var res bson.M
	if err = client.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Decode(&res); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	if ok, _ := res["ok"].(float64); ok != 1 {
		return fmt.Errorf("ping answered %v", res)
	}

	if !roundtrip {
		return nil
	}

	db := client.Database("specflow_services_check")
	coll := db.Collection("check")
	token := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	if _, err = coll.InsertOne(ctx, bson.D{{Key: "_id", Value: token}}); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	var doc bson.M
	if err = coll.FindOne(ctx, bson.D{{Key: "_id", Value: token}}).Decode(&doc); err != nil {
		return fmt.Errorf("find: %w", err)
	}
	if doc["_id"] != token {
		return errors.New("find returned a different document")
	}
	if err = db.Drop(ctx); err != nil {
		return fmt.Errorf("drop scratch database: %w", err)
	}
	return nil
}
