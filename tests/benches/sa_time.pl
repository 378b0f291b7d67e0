#!/usr/bin/perl
# Times SpamAssassin in-process on header blocks: usage
#   sa_time.pl RULES_DIR REPEAT FILE...
# RULES_DIR holds the only configuration SpamAssassin reads (an init.pre loading the Check
# plugin, and the generated header rules); no network tests, Bayes or default rules.
# Prints "sa: N rules, compile X ms, Y us/message".
use strict;
use warnings;
use Time::HiRes qw(time);
use Mail::SpamAssassin;

my ($dir, $repeat, @files) = @ARGV;
die "usage: $0 RULES_DIR REPEAT FILE...\n" unless $dir && $repeat && @files;

my @msgs;
for my $f (@files) {
    open(my $fh, '<', $f) or die "$f: $!";
    local $/;
    my $m = <$fh>;
    close $fh;
    # Header block only (what popsift reads), plus the empty line and an empty body.
    $m =~ s/\r?\n\r?\n.*\z/\n\n/s;
    push @msgs, $m;
}

my $t0 = time;
my $sa = Mail::SpamAssassin->new({
    rules_filename       => $dir,
    site_rules_filename  => "$dir/site-empty",
    userprefs_filename   => "$dir/site-empty/user_prefs",
    userstate_dir        => "$dir/state",
    local_tests_only     => 1,
    dont_copy_prefs      => 1,
    post_config_text     => "use_bayes 0\nbayes_auto_learn 0\n",
});
$sa->compile_now(0, 1);
my $compile = time - $t0;
my $nrules = scalar(grep { !/^__/ } keys %{ $sa->{conf}->{scores} });

my $check = sub {
    my ($text) = @_;
    my $mail = $sa->parse($text);
    my $st = $sa->check($mail);
    my $score = $st->get_score();
    $st->finish();
    $mail->finish();
    return $score;
};
my $hits = 0;
for my $m (@msgs) {    # warm up, and count messages with a rule hit
    $hits++ if $check->($m) > 0;
}
my $t = time;
for (1 .. $repeat) {
    $check->($_) for @msgs;
}
my $per = (time - $t) / ($repeat * @msgs);
printf "sa: %d rules, compile %.1f ms, %.1f us/message (%d messages x %d; %d with hits)\n",
    $nrules, $compile * 1000, $per * 1e6, scalar(@msgs), $repeat, $hits;
