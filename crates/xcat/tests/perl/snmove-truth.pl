#!/usr/bin/perl
# Development harness, not xCAT code: runs xCAT's own `snmove` plugin
# (xCAT-server/lib/xcat/plugins/snmove.pm, process_request) against an SQLite copy of a table set
# and prints, as JSON, what it left in the tables for the moved node and every xCAT command it
# asked xcatd to run (chdef-like table writes happen inside snmove through DBobjUtils; makeconservercf,
# nodeset, xdsh go through the sub-request). Before that, xCAT's `makehosts` plugin
# (plugins/hosts.pm) writes /etc/hosts from the hosts table, so xCAT::NetworkUtils->getipaddr
# resolves names as it does on a management node.
#
# Must run in a private mount namespace whose /etc is a throw-away overlay (makehosts rewrites
# /etc/hosts); tests/snmove.rs does that with `unshare -m`:
#
#   XCATCFG=SQLite:DIR perl snmove-truth.pl XCAT_SRC XCAT_COMMIT NODE [SNMOVE-ARGS...]
#
# The one thing xcatd would do that cannot run here is `xdsh <sn> /sbin/ip addr` (snmove.pm:1640-1700,
# getSNinterfaces): the sub-request answers it with the SN's addresses as the hosts table lists them
# (hosts.ip and each IP of hosts.otherinterfaces, read as makehosts reads them, hosts.pm:291-298), which is what
# hanfs assumes of an SN. Every other sub-request is recorded and answered with success and no output.
use strict;
use warnings;
no warnings 'once';

my ($src, $commit, $node, @args);
BEGIN {
    ($src, $commit, $node, @args) = @ARGV;
    die "usage: XCATCFG=SQLite:DIR $0 XCAT_SRC XCAT_COMMIT NODE [ARGS]\n" unless $src && $commit && $node && $ENV{XCATCFG};
    $::XCATROOT = "$src/perl-xCAT";
}
use lib "$src/perl-xCAT", "$src/xCAT-server/lib/perl";
use JSON;
require xCAT::Table;
require xCAT::NetworkUtils;
require xCAT::DBobjUtils;
require xCAT::InstUtils;
require "$src/xCAT-server/lib/xcat/plugins/hosts.pm";
require "$src/xCAT-server/lib/xcat/plugins/snmove.pm";

my @said;
my $cb = sub {
    my $r = shift;
    for my $k (qw(data info error warning)) {
        next unless $r->{$k};
        push @said, map { ref($_) ? encode_json($_) : "$k: $_" } @{ $r->{$k} };
    }
};

xCAT_plugin::hosts::process_request({ command => ['makehosts'], arg => [] }, $cb, sub {});
my @etc_hosts = do { open(my $fh, '<', '/etc/hosts') or die "/etc/hosts: $!\n"; map { chomp; $_ } <$fh> };

# The SN's addresses from the hosts table.
sub sn_addrs {
    my $sn = shift;
    my $h = xCAT::Table->new('hosts', -create => 0) or return ();
    my $e = $h->getNodeAttribs($sn, [ 'ip', 'otherinterfaces' ]) || {};
    my @ips;
    push @ips, $e->{ip} if $e->{ip};
    for my $oi (split /,/, ($e->{otherinterfaces} || '')) {
        # hosts.pm:291-298 (addotherinterfaces): `name!IP`, else `name:IP`.
        my ($name, $ip) = $oi =~ /!/ ? split(/!/, $oi) : split(/:/, $oi);
        push @ips, $ip if defined $ip && $ip =~ /^\d+\.\d+\.\d+\.\d+$/;
    }
    return @ips;
}

my @ran;
my $subreq;
$subreq = sub {
    my ($req, $out) = @_;
    my $cmd = $req->{command}->[0];
    my @nodes = @{ $req->{node} || [] };
    my @arg = @{ $req->{arg} || [] };
    push @ran, { command => $cmd, node => \@nodes, arg => \@arg };
    $::RUNCMD_RC = 0;
    if ($cmd eq 'xdsh' && grep { m{ip addr|ifconfig} } @arg) {
        my @lines;
        for my $sn (@nodes) {
            push @lines, map { "$sn:     inet $_/32 scope global" } sn_addrs($sn);
        }
        # xdsh answers one text; getSNinterfaces splits it into lines (snmove.pm:1683).
        $out->({ info => [ join("\n", @lines) . "\n" ] });
    }
};

my $rc = xCAT_plugin::snmove::process_request({ command => ['snmove'], arg => [ @args, $node ] }, $cb, $subreq);

my %after;
my @want = (
    [ noderes => qw(servicenode xcatmaster tftpserver nfsserver monserver) ],
    [ nodehm  => qw(conserver) ],
);
for my $spec (@want) {
    my ($table, @cols) = @$spec;
    my $t = xCAT::Table->new($table, -create => 0) or next;
    my $ent = $t->getNodeAttribs($node, \@cols) || {};
    $after{"$table.$_"} = $ent->{$_} for @cols;
}
# snmove writes a statelite row keyed by the node (snmove.pm:773-781).
if (my $st = xCAT::Table->new('statelite', -create => 0)) {
    my $row = $st->getAttribs({ node => $node }, 'statemnt');
    $after{'statelite.statemnt(node row)'} = $row ? $row->{statemnt} : undef;
}

print JSON->new->canonical->pretty->encode({
    xcat_commit => $commit,
    made_by => "XCATCFG=SQLite:<dir> unshare -m (overlay /etc) perl crates/xcat/tests/perl/snmove-truth.pl <xcat-core checkout> $commit $node @args",
    node => $node,
    args => \@args,
    rc => $rc,
    after => \%after,
    ran => \@ran,
    said => \@said,
    etc_hosts => \@etc_hosts,
    node_ip => scalar(xCAT::NetworkUtils->getipaddr($node)),
});
