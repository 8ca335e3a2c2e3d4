using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace RestoreFs.Datastore;

/// <summary>
/// Decompresses a chunk and computes its SHA-256 at the same time: libzstd's streaming decoder writes the chunk in
/// segments on the calling thread while a hashing thread digests the segments already written. A cold random read
/// costs one chunk decode; pipelined it takes about as long as the hash alone instead of decompression plus hash.
/// When no hashing thread is free, the caller hashes the rest itself — the pipeline never waits behind other work.
/// </summary>
internal static unsafe class HashPipeline
{
    private const int Segment = 512 * 1024;
    private static readonly BlockingCollection<Job> Queue = StartWorkers();

    /// <summary>Smallest chunk worth the hand-off to another thread.</summary>
    public const int MinimumLength = 2 * Segment;

    /// <summary>
    /// Decompresses the single zstd frame <paramref name="frame"/> into <paramref name="destination"/> (which it must
    /// fill exactly) and writes SHA-256(destination ‖ <paramref name="suffix"/>) to <paramref name="digest"/>.
    /// Returns the bytes written; throws <see cref="InvalidDataException"/> with zstd's message.
    /// </summary>
    public static int DecompressAndHash(ReadOnlySpan<byte> frame, Span<byte> destination, ReadOnlySpan<byte> suffix, Span<byte> digest)
    {
        fixed (byte* dst = destination)
        {
            var job = new Job(dst, destination.Length);
            Queue.Add(job);
            int written;
            try
            {
                written = NativeZstd.DecompressStreaming(frame, destination, Segment, done =>
                {
                    Volatile.Write(ref job.Available, done);
                    job.Signal.Release();
                });
            }
            finally
            {
                // Stop the helper from reading past what is valid (or at all, on error) and take over if it never started.
                Volatile.Write(ref job.Finished, 1);
                job.Signal.Release();
            }

            if (Interlocked.CompareExchange(ref job.Owner, Job.Caller, Job.Unclaimed) == Job.Unclaimed)
            {
                job.Hash.AppendData(destination[..written]);
            }
            else
            {
                job.Done.Wait();
                if (job.Hashed < written)
                {
                    job.Hash.AppendData(destination[job.Hashed..written]);
                }
            }

            job.Hash.AppendData(suffix);
            job.Hash.GetHashAndReset(digest);
            job.Dispose();
            return written;
        }
    }

    private static BlockingCollection<Job> StartWorkers()
    {
        var queue = new BlockingCollection<Job>();
        for (var i = 0; i < Math.Max(1, Environment.ProcessorCount); i++)
        {
            var thread = new Thread(() => Work(queue)) { IsBackground = true, Name = $"chunk-hash-{i}" };
            thread.Start();
        }

        return queue;
    }

    private static void Work(BlockingCollection<Job> queue)
    {
        foreach (var job in queue.GetConsumingEnumerable())
        {
            if (Interlocked.CompareExchange(ref job.Owner, Job.Worker, Job.Unclaimed) != Job.Unclaimed)
            {
                continue;
            }

            try
            {
                while (true)
                {
                    var finished = Volatile.Read(ref job.Finished) == 1;
                    var available = Volatile.Read(ref job.Available);
                    if (available > job.Hashed)
                    {
                        job.Hash.AppendData(new ReadOnlySpan<byte>(job.Data + job.Hashed, available - job.Hashed));
                        job.Hashed = available;
                    }
                    else if (finished)
                    {
                        break;
                    }
                    else
                    {
                        job.Signal.Wait();
                    }
                }
            }
            finally
            {
                job.Done.Set();
            }
        }
    }

    private sealed class Job(byte* data, int length) : IDisposable
    {
        public const int Unclaimed = 0;
        public const int Worker = 1;
        public const int Caller = 2;

        public readonly byte* Data = data;
        public readonly int Length = length;
        public readonly IncrementalHash Hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        public readonly SemaphoreSlim Signal = new(0);
        public readonly ManualResetEventSlim Done = new(false);
        public int Owner;
        public int Available;
        public int Finished;
        public int Hashed;

        public void Dispose()
        {
            Hash.Dispose();
            Signal.Dispose();
            Done.Dispose();
        }
    }
}
