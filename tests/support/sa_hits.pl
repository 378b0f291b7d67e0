#!/usr/bin/perl
# Prints the rules SpamAssassin hits on each message: usage
#   sa_hits.pl STATE_DIR FILE...
# One line per file: "FILE<TAB>RULE,RULE,...". Stock rules (/usr/share/spamassassin) and site
# configuration (/etc/spamassassin, which loads the plugins), local tests only, Bayes off: the
# score set 0 that `popsift import-sa` imports. One process for all files, since loading the
# rules is the slow part.
use strict;
use warnings;
use Mail::SpamAssassin;

my ($state, @files) = @ARGV;
die "usage: $0 STATE_DIR FILE...\n" unless $state && @files;

my $sa = Mail::SpamAssassin->new({
    rules_filename      => '/usr/share/spamassassin',
    site_rules_filename => '/etc/spamassassin',
    userprefs_filename  => "$state/user_prefs",
    userstate_dir       => $state,
    local_tests_only    => 1,
    dont_copy_prefs     => 1,
    post_config_text    => "use_bayes 0\nbayes_auto_learn 0\nuse_auto_welcomelist 0\n",
});
$sa->compile_now(0, 1);

for my $f (@files) {
    open(my $fh, '<', $f) or die "$f: $!";
    local $/;
    my $text = <$fh>;
    close $fh;
    my $mail = $sa->parse($text);
    my $st = $sa->check($mail);
    print "$f\t", join(',', sort split(/,/, $st->get_names_of_tests_hit())), "\n";
    $st->finish();
    $mail->finish();
}
