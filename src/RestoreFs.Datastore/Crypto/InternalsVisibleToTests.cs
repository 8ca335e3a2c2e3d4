using System.Runtime.CompilerServices;

// CryptoPathTests pick a cipher implementation and feed the environment switch without touching the environment.
[assembly: InternalsVisibleTo("RestoreFs.Datastore.Tests")]
