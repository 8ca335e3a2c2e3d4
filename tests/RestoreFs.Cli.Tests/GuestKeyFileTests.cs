using RestoreFs.Cli.Commands;

namespace RestoreFs.Cli.Tests;

/// <summary>The <c>--guest-passphrase-file</c> format: UUID lines, a default line, comments; errors name the line.</summary>
public sealed class GuestKeyFileTests
{
    [Fact]
    public void Uuid_lines_and_a_default_line_parse_and_travel_as_base64()
    {
        var text = "# keys\r\nUUID=34031A73-29C7-40FB-85C1-D9733076F94B pass with  spaces \n\nplain default\n"u8.ToArray();
        var entries = GuestKeyFile.Parse(text, "keys");
        Assert.Equal(2, entries.Count);
        Assert.Equal("34031a73-29c7-40fb-85c1-d9733076f94b", entries[0].Uuid);
        Assert.Equal("pass with  spaces "u8.ToArray(), entries[0].Passphrase);
        Assert.Null(entries[1].Uuid);
        Assert.Equal("plain default"u8.ToArray(), entries[1].Passphrase);
        var guest = System.Text.Encoding.ASCII.GetString(GuestKeyFile.ForGuest(entries));
        Assert.Equal($"34031a73-29c7-40fb-85c1-d9733076f94b {Convert.ToBase64String("pass with  spaces "u8.ToArray())}\n* {Convert.ToBase64String("plain default"u8.ToArray())}\n", guest);
    }

    [Theory]
    [InlineData("UUID=nope secret\n", "line 1")]
    [InlineData("# only\nUUID=34031a73-29c7-40fb-85c1-d9733076f94b\n", "line 2")]
    [InlineData("# nothing\n\n", "no passphrase")]
    public void Malformed_files_are_refused_naming_the_line(string text, string expected)
    {
        var e = Assert.Throws<FormatException>(() => GuestKeyFile.Parse(System.Text.Encoding.UTF8.GetBytes(text), "keys"));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain("secret", e.Message);
    }
}
