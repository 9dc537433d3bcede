#!/usr/bin/perl
# Development harness, not xCAT code: loads xCAT's own Table.pm and SvrUtils.pm from an xCAT
# checkout and prints, as JSON, what xCAT computes for every enabled node of an SQLite database:
# getNodeAttribs for the attributes hanfs reads, and each statemnt after anaconda.pm's subVars
# (xCAT-server/lib/xcat/plugins/anaconda.pm:658-678). The output is committed as test data
# (tests/fixtures/<set>/xcat-truth.json); tests/truth.rs regenerates it when XCAT_SRC is set.
#
#   XCATCFG=SQLite:DIR perl xcat-truth.pl XCAT_SRC XCAT_COMMIT > xcat-truth.json
#
# Needs Debian's perl, libdbi-perl, libdbd-sqlite3-perl, libjson-perl.
use strict;
use warnings;

my ($src, $commit);
BEGIN {
    ($src, $commit) = @ARGV;
    die "usage: XCATCFG=SQLite:DIR $0 XCAT_SRC XCAT_COMMIT\n" unless $src && $commit && $ENV{XCATCFG};
    $::XCATROOT = "$src/perl-xCAT";
    # No xcatd: xCAT::Utils->isServiceNode and friends read these files; nothing else is stubbed.
}
use lib "$src/perl-xCAT", "$src/xCAT-server/lib/perl";
use JSON;
require xCAT::Table;
require xCAT::SvrUtils;

my @attrs = (
    [ noderes  => qw(servicenode xcatmaster nfsserver tftpserver nfsdir current_osimage next_osimage) ],
    [ nodetype => qw(os arch profile provmethod) ],
    [ nodehm   => qw(conserver) ],
    [ hosts    => qw(ip hostnames otherinterfaces) ],
    [ statelite => qw(statemnt) ],
);

my $nl = xCAT::Table->new('nodelist', -create => 0) or die "no nodelist table under $ENV{XCATCFG}\n";
my @nodes = sort map { $_->{node} } $nl->getAllNodeAttribs(['node']);
my %out;
for my $node (@nodes) {
    my %n;
    for my $spec (@attrs) {
        my ($table, @cols) = @$spec;
        my $t = xCAT::Table->new($table, -create => 0);
        for my $c (@cols) {
            my $v;
            if ($t) {
                my $ent = $t->getNodeAttribs($node, [$c]);
                $v = $ent->{$c} if $ent;
            }
            $n{"$table.$c"} = $v;
        }
    }
    # anaconda.pm:658-678: subVars on the server and directory parts of a statemnt with a `$`.
    my $sm = $n{'statelite.statemnt'};
    if (defined $sm && $sm =~ /\$/) {
        my ($server, $dir) = split(/:/, $sm);
        unless ($dir) { $dir = $server; $server = ''; }
        if ($dir =~ /\$|#CMD/) {
            $dir = xCAT::SvrUtils->subVars($dir, $node, 'dir', sub {});
            $dir =~ s/\/\//\//g;
        }
        $server = xCAT::SvrUtils->subVars($server, $node, 'server', sub {}) if $server;
        $sm = "$server:$dir";
    }
    $n{'statelite.statemnt(subVars)'} = $sm;
    $out{$node} = \%n;
}
print JSON->new->canonical->pretty->encode({
    xcat_commit => $commit,
    made_by => "XCATCFG=SQLite:<dir> perl crates/xcat/tests/perl/xcat-truth.pl <xcat-core checkout> $commit",
    nodes => \%out,
});
